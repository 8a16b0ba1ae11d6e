"""``resource`` processor: the same actions as ``attributes``, applied to the resource
attributes of every resource entry of a batch (all three signals), as the
OpenTelemetry Collector's ``resource`` processor.

    processors:
      resource:
        attributes:
          - {key: deployment.environment.name, value: staging, action: upsert}
          - {key: host.ip, action: delete}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..component import Capabilities, Consumer, CreateSettings, Kind, make_factory
from ..otlp_values import resources
from ..signals import Signal
from ._actions import ActionConfig, compile_actions
from ._base import InPlaceProcessor

__all__ = ["ResourceConfig", "ResourceProcessor", "factory"]


class ResourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Named ``attributes`` as in the Collector's resource processor.
    attributes: list[ActionConfig] = Field(min_length=1)


class ResourceProcessor(InPlaceProcessor):
    def __init__(self, settings: CreateSettings, config: ResourceConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, next_consumer)
        self._apply = compile_actions(config.attributes)

    def process(self, batch: Any) -> bool:
        changed = False
        for resource in resources(batch.signal, batch.message):
            if self._apply(resource.attributes):
                changed = True
        if changed:
            batch.mark_modified()
        return True


factory = make_factory(
    Kind.PROCESSOR,
    "resource",
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    config_model=ResourceConfig,
    create=ResourceProcessor,
    capabilities=Capabilities(mutates_data=True),
)
