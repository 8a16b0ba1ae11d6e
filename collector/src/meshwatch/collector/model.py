"""The base of every config model: unknown keys are errors (a misspelt key must not be ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A pydantic model that refuses keys it does not declare (the loader suggests the right one)."""

    model_config = ConfigDict(extra="forbid")
