"""``forward`` connector: the end of one pipeline is the start of others, same signal, unchanged.

As the OpenTelemetry Collector's ``forwardconnector``: what a pipeline exports to
``forward`` is received, as it is, by every pipeline that lists ``forward`` as a
receiver. It exists for placement: processors that must see every span (the
``memory_limiter``, span-derived metrics) run once in the first pipeline, and a
second pipeline goes on with processors that keep only some of them (``tail_sampling``)::

    connectors:
      forward/sampled: {}
    service:
      pipelines:
        traces:         {receivers: [otlp], processors: [memory_limiter], exporters: [spanmetrics, forward/sampled]}
        traces/sampled: {receivers: [forward/sampled], processors: [tail_sampling], exporters: [otlp/jaeger]}

Compared with one receiver listed in two pipelines, the batch is refused (or not)
once, before it is counted: a ``memory_limiter`` refusal in only one of two pipelines
would make the sender retry a batch the other one had already counted.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..batch import Batch
from ..component import Capabilities, Component, Consumer, CreateSettings, Host, Kind, make_factory
from ..model import StrictModel
from ..signals import Signal

__all__ = ["ForwardConfig", "ForwardConnector", "factory"]


class ForwardConfig(StrictModel):
    """No settings (as the Go connector)."""


class ForwardConnector:
    """Hands every batch to the pipelines downstream; changes nothing, holds nothing."""

    def __init__(self, settings: CreateSettings, next_consumer: Consumer) -> None:
        self.id = settings.id
        self.next = next_consumer

    def start(self, host: Host) -> None:
        return None

    def shutdown(self, timeout: float) -> None:
        return None

    def consume(self, batch: Batch) -> None:
        # A refusal downstream goes back unchanged to the pipeline (and the sender) in front.
        self.next.consume(batch)


def _create(settings: CreateSettings, config: ForwardConfig, next: Mapping[Signal, Consumer]) -> Component:
    """One per input signal, feeding the pipelines of that same signal (the config check makes sure there are)."""
    return ForwardConnector(settings, next[settings.signal or Signal.TRACES])


factory = make_factory(
    Kind.CONNECTOR,
    "forward",
    signals=frozenset(Signal),
    output_signals=frozenset(Signal),
    config_model=ForwardConfig,
    create=_create,
    capabilities=Capabilities(mutates_data=False),
)
