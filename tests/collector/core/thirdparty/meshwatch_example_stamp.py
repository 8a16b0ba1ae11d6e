"""A third-party collector component, written only against the documented contract.

It lives outside the meshwatch packages and is found by its entry point (see the
``.dist-info`` beside it): a processor ``stamp`` that sets one attribute on every span
and counts them on the collector's self-telemetry (``settings.telemetry``).
``tests/collector/core/test_component_model.py`` runs it in a real collector.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from meshwatch.collector.batch import Batch
from meshwatch.collector.component import (
    Capabilities,
    Component,
    ComponentId,
    Consumer,
    CreateSettings,
    Host,
    Kind,
    make_factory,
)
from meshwatch.collector.signals import Signal


class StampConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = "stamped.by"
    value: str = "meshwatch-example-stamp"


class Stamp:
    def __init__(self, settings: CreateSettings, config: StampConfig, next: Consumer) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.next = next
        # On the collector's own registry (served on its metrics address with the rest).
        self.stamped = settings.telemetry.counter(
            "example_stamped_spans", "Spans the stamp processor set its attribute on", ["processor"]
        ).labels(str(settings.id))

    def start(self, host: Host) -> None:
        pass

    def shutdown(self, timeout: float) -> None:
        pass

    def consume(self, batch: Batch) -> None:
        for resource_spans in batch.message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    span.attributes.add(key=self.config.key).value.string_value = self.config.value
                self.stamped.inc(len(scope_spans.spans))
        batch.mark_modified()
        self.next.consume(batch)


def _create(settings: CreateSettings, config: StampConfig, next: Consumer) -> Component:
    return Stamp(settings, config, next)


factory = make_factory(
    Kind.PROCESSOR,
    "stamp",
    signals={Signal.TRACES},
    config_model=StampConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=True),
)

#: What a component built without make_factory looks like: refused with a message that says so.
not_a_factory = object()
