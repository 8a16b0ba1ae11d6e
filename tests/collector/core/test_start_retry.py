"""``start_collector`` tries new ports only when the collector lost one the harness chose."""

from __future__ import annotations

from meshwatch.collector.testing import _lost_a_chosen_port


def test_a_start_is_retried_only_when_a_chosen_port_was_taken() -> None:
    chosen = {"receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:23001"}}}}}
    busy = RuntimeError("cannot listen for OTLP/HTTP on 127.0.0.1:23001: Address already in use")
    assert _lost_a_chosen_port(busy, chosen, {"receivers": {"otlp": {}}})
    assert not _lost_a_chosen_port(busy, chosen, chosen)  # the test named that port: its own mistake
    assert not _lost_a_chosen_port(RuntimeError("bad config"), chosen, {})
