"""``tail_sampling`` processor: wait until a trace is complete, then keep it if a policy says so.

Configured like the OpenTelemetry Collector contrib ``tailsamplingprocessor``
(v0.161.0; policies and their semantics in ``_tail_policies``, keys in
``_tail_config``): spans are grouped by trace id and held for ``decision_wait`` from
the trace's first span; then the policies vote: any ``drop`` wins, then any
"sample", else the trace is not sampled. Kept traces go on as new batches; the rest
is counted in ``meshwatch_processor_filtered_items_total{reason="sampled_out"}``.

Where the Go processor hurts, this one differs (all counted, see docs/sampling.md):

* **Bounded memory, in bytes too.** ``memory_limit_mib`` bounds the span bytes held
  (undecided traces plus kept output not yet handed on), next to ``num_traces``.
  When either is reached, ``when_full`` decides: ``evict_oldest`` decides the oldest
  undecided trace at once on the spans it has (the Go processor drops it unseen),
  ``refuse`` refuses the batch with ``Refused("tail_sampling_full", retryable=True)``,
  so the sender keeps it and retries. Held bytes are reported to the memory limiter.
* **A decision cache by default**, so late spans of a decided trace get its decision.
* **Early decision** (``decision_wait_after_root_received``): once the root span is
  in and the trace has had no new span for that long, it is decided without waiting
  for ``decision_wait``.
* **The decision loop cannot be starved**: a timer thread decides in rounds of at
  most ``ROUND`` traces, and a receiving thread that finds decisions overdue makes a
  round itself before it returns, so decisions keep pace with ingest.

Spans are acknowledged to the sender once held in memory (as in the Go processor):
what is undecided when the process dies is lost, so run it behind a durable tier
(Kafka) when that matters. Put ``spanmetrics`` and ``servicegraph`` before it, so
RED metrics are computed from every span.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from typing import Any

from ..batch import Batch
from ..component import (
    Capabilities,
    Consumer,
    CreateSettings,
    Host,
    Kind,
    PartiallyAccepted,
    Refused,
    make_factory,
)
from ..signals import Signal
from ..telemetry import Telemetry
from ._tail_config import TailSamplingConfig
from ._tail_policies import DROPPED, SAMPLED, Decision, TraceView, build_policies
from ._tail_store import (
    SPAN_OVERHEAD,
    TRACE_OVERHEAD,
    DecisionCache,
    Trace,
    TraceStore,
    request_of,
    resource_prefix,
    scope_prefix,
    span_field,
)

__all__ = ["TailSamplingConfig", "TailSamplingProcessor", "factory"]

#: Most traces decided in one round while holding the lock (then ingest gets a turn).
ROUND = 512
#: A batch handed on holds at most this many spans / bytes of kept traces.
OUT_SPANS = 8192
OUT_BYTES = 4 * 1024 * 1024
#: (resource fields, scope fields, {trace id: spans}) of one scope entry of a batch.
Piece = tuple[bytes, bytes, dict[bytes, list[bytes]]]
_DECISION_NAMES = {Decision.SAMPLED: "sampled", Decision.NOT_SAMPLED: "not_sampled", Decision.DROPPED: "dropped"}
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TailSamplingProcessor:
    def __init__(
        self,
        settings: CreateSettings,
        config: TailSamplingConfig,
        next_consumer: Consumer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = settings.id
        self.config = config
        self.next = next_consumer
        self._clock = clock
        self.policies = build_policies(config.policies, clock)
        self.store = TraceStore()
        self.cache = DecisionCache(
            config.decision_cache.sampled_cache_size, config.decision_cache.non_sampled_cache_size
        )
        self._wait = config.decision_wait
        self._quiet = config.decision_wait_after_root_received
        self._refuse = config.when_full == "refuse"
        self._limit = config.memory_limit_bytes
        self._early: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        #: Kept output not yet handed on: (request bytes, spans).
        self._outbox: deque[tuple[bytes, int]] = deque()
        self._outbox_bytes = 0
        self._retry_at = 0.0
        #: Store, cache, outbox and the policies' state; decisions are made holding it.
        self._lock = threading.Lock()
        #: One thread hands kept traces on at a time (outside ``_lock``: exporters may block).
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick = max(0.01, min(0.5, self._wait / 10, self._quiet / 4 if self._quiet else 0.5))
        self._tally: Tally[tuple[str, ...]] = Tally()
        self._observations: list[tuple[str, float, float]] = []
        self._telemetry = settings.telemetry
        self.logger = logging.getLogger(f"meshwatch.collector.processor.{self.id}")
        self._bind(settings.telemetry)

    # --- lifecycle ---------------------------------------------------------------------------

    def _bind(self, telemetry: Telemetry) -> None:
        p = "meshwatch_processor_tail_sampling"
        name = str(self.id)
        self._m_traces = telemetry.counter(
            f"{p}_traces",
            "Traces decided, by final decision and the policy that decided",
            ("processor", "decision", "policy"),
        )
        self._m_votes = telemetry.counter(
            f"{p}_policy_decisions", "Each top-level policy's vote on each trace", ("processor", "policy", "decision")
        )
        self._m_late = telemetry.counter(
            f"{p}_late_spans",
            "Spans that arrived after their trace was decided (they follow the cached decision)",
            ("processor", "decision"),
        )
        self._m_evicted = telemetry.counter(
            f"{p}_evicted_traces",
            "Undecided traces decided early because num_traces or memory_limit_mib was reached",
            ("processor", "reason"),
        )
        self._m_dropped = telemetry.counter(
            f"{p}_dropped_spans", "Spans of kept traces that could not be handed on (a loss)", ("processor", "reason")
        )
        self._m_errors = telemetry.counter(
            f"{p}_policy_errors",
            "Policy evaluations that raised (the policy's vote is ignored)",
            ("processor", "policy"),
        )
        self._m_latency = telemetry.histogram(
            f"{p}_decision_latency_seconds",
            "From a trace's first span to its decision, by what triggered it",
            ("processor", "trigger"),
            buckets=_LATENCY_BUCKETS,
        )
        self._m_lag = telemetry.histogram(
            f"{p}_decision_lag_seconds",
            "How long after it was due a trace was decided (grows if the decision loop falls behind)",
            ("processor",),
            buckets=_LAG_BUCKETS,
        )
        telemetry.gauge(f"{p}_traces_held", "Undecided traces in memory", ("processor",)).labels(name).set_function(
            lambda: len(self.store)
        )
        self._m_filtered = telemetry.processor_filtered.labels(name, "traces", "sampled_out")

    def start(self, host: Host) -> None:
        self.logger = host.logger
        self._telemetry.register_held(str(self.id), self.held_bytes)  # the memory limiter counts it
        self._thread = threading.Thread(target=self._run, name=f"{self.id} decisions", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float) -> None:
        """Decide what is pending on the spans at hand (or drop it if configured), hand kept traces on."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            now = self._clock()
            if self.config.drop_pending_traces_on_shutdown:
                while len(self.store):
                    self._m_filtered.inc(self.store.pop_oldest().span_count)
            else:
                while len(self.store):
                    trace = self.store.pop_oldest()
                    self._decide(trace, now, "shutdown", now)
            self._publish()
        self._retry_at = 0.0
        while self._outbox and time.monotonic() < deadline:
            if not self._flush(block=True):
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                self._retry_at = 0.0
        with self._lock:
            lost = sum(spans for _, spans in self._outbox)
            self._outbox.clear()
            self._outbox_bytes = 0
        if lost:
            self._m_dropped.labels(str(self.id), "shutdown").inc(lost)
        self._telemetry.unregister_held(str(self.id))

    def held_bytes(self) -> int:
        """Bytes of span data held: undecided traces and kept output not yet handed on."""
        return self.store.held_bytes + self._outbox_bytes

    # --- ingest --------------------------------------------------------------------------------

    def _split(self, message: Any) -> tuple[list[Piece], set[bytes], dict[bytes, list[int]], int]:
        """The batch's spans by (resource, scope) and trace id, serialized; root spans' trace ids;
        each trace's [earliest start, latest end] (-1: a zero timestamp); bytes."""
        store = self.store
        pieces = []
        roots: set[bytes] = set()
        bounds: dict[bytes, list[int]] = {}
        size = 0
        for rs in message.resource_spans:
            resource = store.intern(resource_prefix(rs))
            for ss in rs.scope_spans:
                by_trace: dict[bytes, list[bytes]] = {}
                for span in ss.spans:
                    field = span_field(span.SerializeToString())
                    size += len(field)
                    trace_id = span.trace_id
                    spans = by_trace.get(trace_id)
                    if spans is None:
                        by_trace[trace_id] = [field]
                    else:
                        spans.append(field)
                    if not span.parent_span_id:
                        roots.add(trace_id)
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    known = bounds.get(trace_id)
                    if not start or not end:
                        bounds[trace_id] = [-1, -1]
                    elif known is None:
                        bounds[trace_id] = [start, end]
                    elif known[0] >= 0:  # comparisons, not min()/max() calls: this runs per span
                        if start < known[0]:  # noqa: PLR1730
                            known[0] = start
                        if end > known[1]:  # noqa: PLR1730
                            known[1] = end
                if by_trace:
                    pieces.append((resource, store.intern(scope_prefix(ss)), by_trace))
        return pieces, roots, bounds, size

    def consume(self, batch: Batch) -> None:
        pieces, roots, bounds, size = self._split(batch.message)
        if not pieces:
            return
        with self._lock:
            now = self._clock()
            if self._refuse:
                self._admit(pieces, size)
            self._ingest(pieces, roots, bounds, now)
            if not self._refuse:
                self._evict(now)
            if self._overdue(now):
                self._decide_due(now, ROUND)
            self._publish()
        if self._outbox:
            self._flush(block=False)

    def _admit(self, pieces: list[Piece], size: int) -> None:
        """Refuse the whole batch (nothing kept) if it would pass ``num_traces`` or the memory limit."""
        if not len(self.store) and not self._outbox:
            return  # never refuse into an empty processor: the receiver's size limit bounds a batch
        store, cache = self.store, self.cache
        new = {t for _, _, by_trace in pieces for t in by_trace if store.get(t) is None}
        new = {t for t in new if cache.get(t) is None}
        spans = sum(len(s) for _, _, by_trace in pieces for s in by_trace.values())
        added = size + SPAN_OVERHEAD * spans + TRACE_OVERHEAD * len(new)
        too_many = len(store) + len(new) > self.config.num_traces
        if too_many or (self._limit and self.held_bytes() + added > self._limit):
            raise Refused(
                "tail_sampling_full",
                f"{self.id} holds {len(store)} traces / {self.held_bytes() >> 20} MiB awaiting a decision "
                f"(num_traces {self.config.num_traces}, memory_limit_mib {self.config.memory_limit_mib}); retry later",
                retryable=True,
                retry_after=1.0,
            )

    def _ingest(self, pieces: list[Piece], roots: set[bytes], bounds: dict[bytes, list[int]], now: float) -> None:
        store, cache, tally = self.store, self.cache, self._tally
        early = self._quiet > 0
        too_large = self.config.maximum_trace_size_bytes
        for resource, scope, by_trace in pieces:
            for trace_id, spans in by_trace.items():
                trace = store.get(trace_id)
                if trace is None:
                    decided = cache.get(trace_id)
                    if decided is not None:  # a late span: the trace's decision stands
                        tally[("late", "sampled" if decided else "not_sampled")] += len(spans)
                        if decided:
                            self._to_outbox(request_of(resource, scope, spans), len(spans))
                        else:
                            tally[("filtered",)] += len(spans)
                        continue
                    trace = store.create(trace_id, now)
                earliest, latest = bounds[trace_id]
                trace.widen(earliest, latest)
                store.grew(trace.add(resource, scope, spans))
                trace.last_seen = now
                if early and trace_id in roots and not trace.root_seen:
                    trace.root_seen = True
                    heapq.heappush(self._early, (now + self._quiet, next(self._seq), trace_id))
                if too_large and trace.nbytes - TRACE_OVERHEAD - SPAN_OVERHEAD * trace.span_count > too_large:
                    store.pop(trace_id)
                    self._decide(trace, now, "too_large", now, forced=Decision.NOT_SAMPLED)

    def _evict(self, now: float) -> None:
        """``evict_oldest``: decide the oldest undecided traces until the bounds hold again."""
        store, limit = self.store, self._limit
        while len(store) > self.config.num_traces:
            self._decide(store.pop_oldest(), now, "evicted", now)
            self._tally[("evicted", "num_traces")] += 1
        while limit and len(store) and self.held_bytes() > limit:
            self._decide(store.pop_oldest(), now, "evicted", now)
            self._tally[("evicted", "memory")] += 1
        # Kept output the next consumer refuses cannot wait beyond the bound either.
        while limit and self._outbox and self._outbox_bytes > limit:
            wire, spans = self._outbox.popleft()
            self._outbox_bytes -= len(wire)
            self._tally[("dropped", "memory")] += spans

    # --- deciding ------------------------------------------------------------------------------

    def _overdue(self, now: float) -> bool:
        oldest = self.store.oldest()
        if oldest is not None and oldest.first_seen + self._wait + self._tick < now:
            return True
        return bool(self._early) and self._early[0][0] + self._tick < now

    def _decide_due(self, now: float, limit: int) -> int:
        """Decide up to ``limit`` traces that are due (lock held); returns how many."""
        store, wait = self.store, self._wait
        done = 0
        while done < limit:
            oldest = store.oldest()
            if oldest is None or oldest.first_seen + wait > now:
                break
            store.pop_oldest()
            self._decide(oldest, now, "decision_wait", oldest.first_seen + wait)
            done += 1
        heap = self._early
        while heap and done < limit and heap[0][0] <= now:
            _, _, trace_id = heapq.heappop(heap)
            trace = store.get(trace_id)
            if trace is None:
                continue  # decided already
            due = trace.last_seen + self._quiet
            if due > now:  # a span came in meanwhile: the quiet period starts again
                heapq.heappush(heap, (due, next(self._seq), trace_id))
                continue
            store.pop(trace_id)
            self._decide(trace, now, "early", due)
            done += 1
        return done

    def _decide(self, trace: Trace, now: float, trigger: str, due: float, forced: Decision | None = None) -> None:
        """Decide one trace taken out of the store (lock held): cache it, keep or count its spans."""
        wire = trace.wire()
        decision, policy = (
            (forced, "")
            if forced is not None
            else self._evaluate(TraceView(trace.trace_id, trace.span_count, trace.nbytes, wire, trace.bounds()))
        )
        sampled = decision is SAMPLED
        self.cache.put(trace.trace_id, sampled)
        if sampled:
            self._to_outbox(wire, trace.span_count)
        else:
            self._tally[("filtered",)] += trace.span_count
        self._tally[("trace", _DECISION_NAMES[decision], policy)] += 1
        self._observations.append((trigger, now - trace.first_seen, max(0.0, now - due)))

    def _evaluate(self, view: TraceView) -> tuple[Decision, str]:
        tally = self._tally
        sampled_by = ""
        for policy in self.policies:
            try:
                decision = policy.evaluator.evaluate(view)
            except Exception:  # a policy bug must not lose the trace: its vote is ignored, as Go does errors
                tally[("error", policy.name)] += 1
                self.logger.exception("%s: policy %s failed", self.id, policy.name)
                continue
            tally[("vote", policy.name, _DECISION_NAMES[decision])] += 1
            if decision is DROPPED:
                return DROPPED, policy.name
            if decision is SAMPLED and not sampled_by:
                sampled_by = policy.name
                if self.config.sample_on_first_match:
                    break
        return (SAMPLED, sampled_by) if sampled_by else (Decision.NOT_SAMPLED, "")

    def _publish(self) -> None:
        """Move the round's counts into the metrics (lock held): one update per series, not per trace."""
        name = str(self.id)
        for key, count in self._tally.items():
            kind = key[0]
            if kind == "trace":
                self._m_traces.labels(name, key[1], key[2]).inc(count)
            elif kind == "vote":
                self._m_votes.labels(name, key[1], key[2]).inc(count)
            elif kind == "filtered":
                self._m_filtered.inc(count)
            elif kind == "late":
                self._m_late.labels(name, key[1]).inc(count)
            elif kind == "evicted":
                self._m_evicted.labels(name, key[1]).inc(count)
            elif kind == "dropped":
                self._m_dropped.labels(name, key[1]).inc(count)
            elif kind == "error":
                self._m_errors.labels(name, key[1]).inc(count)
        self._tally.clear()
        if self._observations:
            lag = self._m_lag.labels(name)
            for trigger, latency, late in self._observations:
                self._m_latency.labels(name, trigger).observe(latency)
                lag.observe(late)
            self._observations.clear()

    # --- handing kept traces on ----------------------------------------------------------------

    def _to_outbox(self, wire: bytes, spans: int) -> None:
        self._outbox.append((wire, spans))
        self._outbox_bytes += len(wire)

    def _flush(self, block: bool) -> bool:
        """Hand kept traces to the next consumer; False if it refused (they stay, retried later)."""
        if not self._flush_lock.acquire(blocking=block):
            return True
        try:
            while True:
                if self._clock() < self._retry_at:
                    return False
                with self._lock:
                    chunk: list[tuple[bytes, int]] = []
                    spans = size = 0
                    while self._outbox and (not chunk or (spans < OUT_SPANS and size < OUT_BYTES)):
                        item = self._outbox.popleft()
                        chunk.append(item)
                        spans += item[1]
                        size += len(item[0])
                    if not chunk:
                        return True
                batch = Batch(Signal.TRACES, b"".join(wire for wire, _ in chunk), None, spans)
                try:
                    self.next.consume(batch)
                except Refused as refused:
                    if refused.retryable:
                        with self._lock:
                            self._outbox.extendleft(reversed(chunk))
                            self._retry_at = self._clock() + min(refused.retry_after, 5.0)
                        return False
                    self._m_dropped.labels(str(self.id), "downstream_rejected").inc(spans)
                except PartiallyAccepted as partial:
                    self._m_dropped.labels(str(self.id), "downstream_rejected").inc(partial.rejected)
                except Exception:  # a bug downstream: count the loss, keep the bytes account right
                    self.logger.exception("%s: handing kept traces on failed", self.id)
                    self._m_dropped.labels(str(self.id), "downstream_error").inc(spans)
                with self._lock:
                    self._outbox_bytes -= size
        finally:
            self._flush_lock.release()

    def service(self, now: float | None = None) -> None:
        """Decide everything due at ``now`` in rounds and hand kept traces on (the timer calls this)."""
        while True:
            with self._lock:
                done = self._decide_due(self._clock() if now is None else now, ROUND)
                self._publish()
            self._flush(block=True)
            if done < ROUND:
                return

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.service()
            except Exception:  # never let a bug stop the decisions
                self.logger.exception("%s: decision round failed", self.id)


factory = make_factory(
    Kind.PROCESSOR,
    "tail_sampling",
    signals=frozenset({Signal.TRACES}),
    config_model=TailSamplingConfig,
    create=TailSamplingProcessor,
    capabilities=Capabilities(mutates_data=False),
)
