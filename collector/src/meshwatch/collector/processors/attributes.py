"""``attributes`` processor: insert, update, upsert, delete, hash, extract or convert
item attributes (span attributes, log record attributes, metric data point
attributes), as the OpenTelemetry Collector's ``attributes`` processor.

    processors:
      attributes/tidy:
        actions:
          - {key: deployment.environment, value: prod, action: upsert}
          - {key: http.url, action: delete}
          - {key: user.email, action: hash}
          - {key: http.route, pattern: "^/(?P<api_version>v[0-9]+)/", action: extract}

``include``/``exclude`` match filters of the Collector are not implemented: use a
separate pipeline for items that should be left alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..component import Capabilities, Consumer, CreateSettings, Kind, make_factory
from ..otlp_values import attribute_lists
from ..signals import Signal
from ._actions import ActionConfig, compile_actions
from ._base import InPlaceProcessor

__all__ = ["AttributesConfig", "AttributesProcessor", "factory"]


class AttributesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actions: list[ActionConfig] = Field(min_length=1)


class AttributesProcessor(InPlaceProcessor):
    def __init__(self, settings: CreateSettings, config: AttributesConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, next_consumer)
        self._apply = compile_actions(config.actions)

    def process(self, batch: Any) -> bool:
        apply = self._apply
        changed = False
        for attrs in attribute_lists(batch.signal, batch.message):
            if apply(attrs):
                changed = True
        if changed:
            batch.mark_modified()
        return True


factory = make_factory(
    Kind.PROCESSOR,
    "attributes",
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    config_model=AttributesConfig,
    create=AttributesProcessor,
    capabilities=Capabilities(mutates_data=True),
)
