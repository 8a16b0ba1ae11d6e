"""``probabilistic_sampler`` processor: keep ``sampling_percentage`` % of traces, the
same traces everywhere.

The decision is the OpenTelemetry Collector's ``hash_seed`` mode: FNV-1a (32 bit)
over the 4 little-endian bytes of ``hash_seed`` followed by the 16 trace-id bytes,
its low 14 bits compared with ``sampling_percentage × 16384 / 100``. Every
collector (ours or the Go one) with the same seed and percentage keeps or drops
the same trace, so a trace is never half sampled. Log records are sampled by their
trace id too; records without one are dropped when ``fail_closed`` (the
Collector's default) and kept otherwise.

Removed items are not a loss: they are counted in
``meshwatch_processor_filtered_items_total{reason="sampled_out"}`` (and
``reason="no_trace_id"`` for log records dropped by ``fail_closed``). A batch left
empty is not forwarded.

    processors:
      probabilistic_sampler:
        sampling_percentage: 25
        hash_seed: 22
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..component import Capabilities, Consumer, CreateSettings, Kind, make_factory
from ..signals import Signal
from ._base import InPlaceProcessor

__all__ = ["SamplerConfig", "ProbabilisticSampler", "factory", "keeps"]

_NUM_BUCKETS = 0x4000  # 2^14, as the Collector
_MASK = _NUM_BUCKETS - 1
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sampling_percentage: float = Field(ge=0, le=100)
    hash_seed: int = Field(0, ge=0, le=0xFFFFFFFF)
    mode: Literal["hash_seed"] = "hash_seed"
    #: Log records without a trace id: dropped (True, the Collector's default) or kept.
    fail_closed: bool = True


def _seeded_state(seed: int) -> int:
    state = _FNV_OFFSET
    for byte in seed.to_bytes(4, "little"):
        state = ((state ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return state


def trace_hash(trace_id: bytes, seed: int = 0, *, _state: int | None = None) -> int:
    """FNV-1a 32 of ``seed`` (4 bytes, little endian) + ``trace_id``."""
    state = _seeded_state(seed) if _state is None else _state
    for byte in trace_id:
        state = ((state ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return state


def keeps(trace_id: bytes, percentage: float, seed: int = 0) -> bool:
    """The sampling decision for one trace id."""
    return (trace_hash(trace_id, seed) & _MASK) < int(percentage * _NUM_BUCKETS / 100)


class ProbabilisticSampler(InPlaceProcessor):
    def __init__(self, settings: CreateSettings, config: SamplerConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, next_consumer)
        self.config = config
        self._threshold = int(config.sampling_percentage * _NUM_BUCKETS / 100)
        self._state = _seeded_state(config.hash_seed)
        self._counter = self.telemetry.processor_filtered

    def _keep(self, trace_id: bytes, decided: dict[bytes, bool]) -> bool:
        decision = decided.get(trace_id)
        if decision is None:
            state = self._state
            for byte in trace_id:
                state = ((state ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
            decision = (state & _MASK) < self._threshold
            decided[trace_id] = decision
        return decision

    def _count(self, signal: Signal, reason: str, items: int) -> None:
        if items:
            self._counter.labels(str(self.id), str(signal), reason).inc(items)

    def process(self, batch: Any) -> bool:
        if self._threshold >= _NUM_BUCKETS:
            return True
        decided: dict[bytes, bool] = {}
        dropped = 0
        no_trace = 0
        message = batch.message
        if batch.signal is Signal.TRACES:
            outer = message.resource_spans
            for rs in outer:
                for ss in rs.scope_spans:
                    spans = ss.spans
                    doomed = [i for i, span in enumerate(spans) if not self._keep(span.trace_id, decided)]
                    for index in reversed(doomed):
                        del spans[index]
                    dropped += len(doomed)
            empty_inner = "scope_spans", "spans"
        elif batch.signal is Signal.LOGS:
            outer = message.resource_logs
            fail_closed = self.config.fail_closed
            for rl in outer:
                for sl in rl.scope_logs:
                    records = sl.log_records
                    doomed = []
                    for index, record in enumerate(records):
                        trace_id = record.trace_id
                        if len(trace_id) != 16 or not any(trace_id):
                            if fail_closed:
                                doomed.append(index)
                                no_trace += 1
                        elif not self._keep(trace_id, decided):
                            doomed.append(index)
                            dropped += 1
                    for index in reversed(doomed):
                        del records[index]
            empty_inner = "scope_logs", "log_records"
        else:
            return True
        if not dropped and not no_trace:
            return True
        _prune(outer, *empty_inner)
        batch.mark_modified()
        self._count(batch.signal, "sampled_out", dropped)
        self._count(batch.signal, "no_trace_id", no_trace)
        return len(outer) > 0


def _prune(outer: Any, scope_field: str, item_field: str) -> None:
    """Remove scope and resource entries left without items (protobuf fields by name: getattr)."""
    for r_index in range(len(outer) - 1, -1, -1):
        scopes = getattr(outer[r_index], scope_field)
        for s_index in range(len(scopes) - 1, -1, -1):
            if not len(getattr(scopes[s_index], item_field)):
                del scopes[s_index]
        if not len(scopes):
            del outer[r_index]


factory = make_factory(
    Kind.PROCESSOR,
    "probabilistic_sampler",
    signals=frozenset({Signal.TRACES, Signal.LOGS}),
    config_model=SamplerConfig,
    create=ProbabilisticSampler,
    capabilities=Capabilities(mutates_data=True),  # drops items from the batch it is handed
)
