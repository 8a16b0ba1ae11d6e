"""The pipeline graph: built once from a validated config, back to front.

Exporters are created first (one instance per exporter id and signal, so each has its
own queue and metrics labels), then each pipeline's processors from last to first
(each gets its ``next`` at construction), then connectors (one per connector id and
input signal, feeding every pipeline that names it as a receiver), then receivers
(one per id, handed a consumer per signal). A component used by several consumers
downstream gets a ``FanOut``, which copies a batch only for consumers that change it.

Start order is exporters, connectors, processors, receivers; stop order the reverse,
so receivers stop taking data first and what is in flight drains downstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .batch import Batch
from .component import Component, ComponentId, Consumer, CreateSettings, Host, Kind, PartiallyAccepted, Refused
from .config import Config, Pipeline
from .signals import Signal
from .telemetry import Telemetry

__all__ = ["Graph", "FanOut", "GraphError"]

log = logging.getLogger("meshwatch.collector.graph")


class GraphError(Exception):
    """A component could not be built or started."""


class FanOut:
    """Hands one batch to several consumers.

    Consumers that do not change data share the batch; each one that does gets its
    own copy (a lazy one: the bytes, decoded again only if it reads them). All
    consumers are offered the batch even if one refuses; if any refused retryably, the
    first refusal is raised, so the sender retries and no consumer silently misses data
    (the ones that took it may see it twice). If the only refusals are for good and some
    consumer took the batch, ``PartiallyAccepted`` tells the sender what was refused.
    """

    def __init__(self, consumers: list[Consumer], mutating: list[bool]) -> None:
        """``mutating[i]``: consumer ``i`` changes batches (its ``Capabilities``, or its pipeline's processors')."""
        if len(mutating) != len(consumers):
            raise ValueError("one mutating flag per consumer")
        self.consumers = consumers
        self.mutates_data = any(mutating)
        self._copy = [flag and len(consumers) > 1 for flag in mutating]

    def consume(self, batch: Batch) -> None:
        if len(self.consumers) == 1:
            self.consumers[0].consume(batch)
            return
        raw = batch.raw if any(self._copy) else b""
        refusals: list[Refused] = []
        accepted = 0
        # Sharing consumers first: they see the batch before anyone could change it.
        order = sorted(range(len(self.consumers)), key=lambda i: self._copy[i])
        for index in order:
            target = batch
            if self._copy[index]:
                target = Batch(batch.signal, _raw=raw, _items=batch.items, received_at=batch.received_at)
                target.context.update(batch.context)
            try:
                self.consumers[index].consume(target)
                accepted += 1
            except Refused as refused:
                refusals.append(refused)
            except PartiallyAccepted:
                accepted += 1  # its own refusal is reported by the fan-out below only if others refused too
        if refusals and accepted and not any(r.retryable for r in refusals):
            # Some pipelines took the batch; retrying would duplicate it there. Say what was refused.
            raise PartiallyAccepted(batch.items, str(refusals[0]), refusals[0].reason)
        if refusals:
            first = refusals[0]
            if not all(r.retryable for r in refusals) and first.retryable:
                first = next(r for r in refusals if not r.retryable)
            raise first


@dataclass
class Graph:
    """Every built component, in start order, plus what each receiver feeds."""

    config: Config
    #: The collector's self-telemetry, handed to every component in its ``CreateSettings``.
    telemetry: Telemetry
    exporters: dict[tuple[ComponentId, Signal], Component] = field(default_factory=dict)
    connectors: dict[tuple[ComponentId, Signal], Component] = field(default_factory=dict)
    processors: list[Component] = field(default_factory=list)
    receivers: dict[ComponentId, Component] = field(default_factory=dict)
    heads: dict[str, Consumer] = field(default_factory=dict)
    #: Pipelines with a processor whose ``Capabilities`` say it changes batches, so a
    #: fan-out into them copies.
    mutating: set[str] = field(default_factory=set)
    started: list[Component] = field(default_factory=list)

    @classmethod
    def build(cls, config: Config, telemetry: Telemetry) -> Graph:
        graph = cls(config, telemetry)
        graph._build()
        return graph

    # --- building ----------------------------------------------------------------------

    def _create(self, kind: Kind, cid: ComponentId, signal: Signal | None, *next: Any) -> Component:
        """``next`` as the kind's factory Protocol names it: none for an exporter, a ``Consumer`` for a
        processor, a ``Mapping[Signal, Consumer]`` for a receiver or a connector."""
        spec = self.config.component(kind, cid)
        try:
            component = spec.factory.create(CreateSettings(cid, signal, self.telemetry), spec.config, *next)
        except Exception as exc:
            raise GraphError(f"cannot create {kind.value} {cid}: {exc}") from exc
        if not isinstance(component, Component):  # the Protocol: ``id``, ``start``, ``shutdown``
            raise GraphError(
                f"cannot create {kind.value} {cid}: {type(component).__name__} has no id, start or shutdown"
            )
        return component

    def _build(self) -> None:
        for pipeline in self.config.pipelines:
            for cid in pipeline.exporters:
                if self._is_connector(cid):
                    continue
                key = (cid, pipeline.signal)
                if key not in self.exporters:
                    self.exporters[key] = self._create(Kind.EXPORTER, cid, pipeline.signal)
        for pipeline in self.config.pipelines:
            self._head(pipeline)
        for pipeline in self.config.pipelines:
            for cid in pipeline.receivers:
                if self._is_connector(cid) or cid in self.receivers:
                    continue
                by_signal: dict[Signal, Consumer] = {}
                for signal in Signal:
                    pipes = [p for p in self._pipelines_with_receiver(cid) if p.signal is signal]
                    if pipes:
                        by_signal[signal] = self._fan_out(pipes)
                self.receivers[cid] = self._create(Kind.RECEIVER, cid, None, by_signal)

    def _is_connector(self, cid: ComponentId) -> bool:
        return (Kind.CONNECTOR, cid) in self.config.components and (Kind.EXPORTER, cid) not in self.config.components

    def _pipelines_with_receiver(self, cid: ComponentId) -> list[Pipeline]:
        return [p for p in self.config.pipelines if cid in p.receivers]

    def _head(self, pipeline: Pipeline) -> Consumer:
        """The first consumer of a pipeline (its first processor, or the exporters' fan-out)."""
        if pipeline.name in self.heads:
            return self.heads[pipeline.name]
        targets: list[Consumer] = []
        mutating: list[bool] = []
        for cid in pipeline.exporters:
            if self._is_connector(cid):
                targets.append(self._connector(cid, pipeline.signal))
                mutating.append(self.config.component(Kind.CONNECTOR, cid).factory.capabilities.mutates_data)
            else:
                targets.append(self.exporters[(cid, pipeline.signal)])
                mutating.append(self.config.component(Kind.EXPORTER, cid).factory.capabilities.mutates_data)
        consumer: Consumer = targets[0] if len(targets) == 1 else FanOut(targets, mutating)
        for cid in reversed(pipeline.processors):
            processor = self._create(Kind.PROCESSOR, cid, pipeline.signal, consumer)
            self.processors.insert(0, processor)
            if self.config.component(Kind.PROCESSOR, cid).factory.capabilities.mutates_data:
                self.mutating.add(pipeline.name)
            consumer = processor  # type: ignore[assignment]
        self.heads[pipeline.name] = consumer
        return consumer

    def _connector(self, cid: ComponentId, signal: Signal) -> Consumer:
        """One connector per input signal, handed one consumer per output signal: the pipelines of
        that signal which name it as a receiver (a metrics pipeline never gets its logs)."""
        key = (cid, signal)
        if key not in self.connectors:
            outputs = self.config.component(Kind.CONNECTOR, cid).factory.output_signals
            by_signal: dict[Signal, Consumer] = {}
            for out in outputs:
                pipes = [p for p in self._pipelines_with_receiver(cid) if p.signal is out]
                for pipe in pipes:
                    self._head(pipe)
                if pipes:
                    by_signal[out] = self._fan_out(pipes)
            self.connectors[key] = self._create(Kind.CONNECTOR, cid, signal, by_signal)
        return self.connectors[key]  # type: ignore[return-value]

    def _fan_out(self, pipes: list[Pipeline]) -> Consumer:
        heads = [self.heads[p.name] for p in pipes]
        if len(heads) == 1:
            return heads[0]
        return FanOut(heads, [p.name in self.mutating for p in pipes])

    # --- running -----------------------------------------------------------------------

    def start_order(self) -> Iterable[Component]:
        yield from self.exporters.values()
        yield from self.connectors.values()
        yield from self.processors
        yield from self.receivers.values()

    def start(self, host: Host) -> None:
        """Start everything, downstream first; on a failure stop what started and raise."""
        for component in self.start_order():
            try:
                component.start(host)
            except Exception as exc:
                log.error("cannot start %s: %s", component.id, exc)
                self.shutdown(5.0)
                raise GraphError(f"cannot start {component.id}: {exc}") from exc
            self.started.append(component)

    def shutdown(self, timeout: float) -> None:
        """Stop in reverse order within ``timeout`` in total (receivers first, exporters drain last)."""
        deadline = time.monotonic() + timeout
        while self.started:
            component = self.started.pop()
            # Exporters get what is left of the budget: draining their queues matters most.
            remaining = max(0.5, deadline - time.monotonic())
            try:
                component.shutdown(remaining)
            except Exception:
                log.exception("error while stopping %s", component.id)
