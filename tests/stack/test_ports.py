"""Listening ports come from below the kernel's ephemeral range, so an outgoing connection cannot
take one between the pick and the server's bind (CI failed that way: ``cannot listen for OTLP/HTTP
on 127.0.0.1:36601: Address already in use``)."""

from __future__ import annotations

import socket

from meshwatch.stack.ports import LISTEN_FLOOR, ListenPorts, ephemeral_port_range, free_port


def test_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    low, _ = ephemeral_port_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(LISTEN_FLOOR <= port < low for port in ports), sorted(ports)[-3:]


def test_kernel_picked_ports_are_in_the_range_avoided() -> None:
    """Positive control for the test above: what ``bind(0)`` (the old way) gives is in the range."""
    low, high = ephemeral_port_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert low <= sock.getsockname()[1] <= high


def test_a_port_someone_listens_on_is_skipped() -> None:
    picker = ListenPorts()
    upcoming = picker.ports[picker.next]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", upcoming))
        taken.listen()
        assert picker.take() != upcoming
        assert free_port(upcoming) != upcoming  # a preferred port in use is not handed out


def test_a_free_preferred_port_is_kept() -> None:
    port = free_port()
    assert free_port(port) == port
