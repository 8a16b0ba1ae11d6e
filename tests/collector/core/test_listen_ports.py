"""The test harness's listening ports: outside the kernel's ephemeral range, so an outgoing
connection cannot take one between the pick and the collector's bind (CI failed that way:
``cannot listen for OTLP/HTTP on 127.0.0.1:36601: Address already in use``)."""

from __future__ import annotations

import socket

from meshwatch.collector import testing
from meshwatch.collector.testing import _ListenPorts, _lost_a_chosen_port, ephemeral_port_range, free_port


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    low, _ = ephemeral_port_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(testing._LISTEN_FLOOR <= port < low for port in ports), sorted(ports)[-3:]


def test_a_port_someone_listens_on_is_skipped() -> None:
    picker = _ListenPorts()
    upcoming = picker.ports[picker.next]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", upcoming))
        taken.listen()
        assert picker.take() != upcoming


def test_kernel_picked_ports_are_in_the_range_this_avoids() -> None:
    """Positive control for the first test: what ``bind(0)`` (the old way) gives is in the range."""
    low, high = ephemeral_port_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert low <= sock.getsockname()[1] <= high


def test_a_start_is_retried_only_when_a_chosen_port_was_taken() -> None:
    chosen = {"receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:23001"}}}}}
    named = {"receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:23001"}}}}}
    busy = RuntimeError("cannot listen for OTLP/HTTP on 127.0.0.1:23001: Address already in use")
    assert _lost_a_chosen_port(busy, chosen, {"receivers": {"otlp": {}}})
    assert not _lost_a_chosen_port(busy, chosen, named)  # the test named it: its own mistake
    assert not _lost_a_chosen_port(RuntimeError("bad config"), chosen, {})
