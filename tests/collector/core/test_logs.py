"""The collector's log: repeated lines are rate-limited, and the count of those left out is said."""

from __future__ import annotations

import io
import json
import logging

import pytest

from meshwatch.collector.logs import JsonFormatter, RepeatFilter


@pytest.fixture
def logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    repeat = RepeatFilter(burst=3, window=10.0)
    handler.addFilter(repeat)
    log = logging.getLogger("meshwatch.tests.repeat")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log, stream, repeat
    log.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_repeated_a_thousand_times_is_written_burst_times(logger) -> None:
    log, stream, _ = logger
    for i in range(1000):
        log.error("accept failed on fd %d", i)  # one template, different arguments
    log.warning("something else")
    lines = _lines(stream)
    assert [line["message"] for line in lines] == [
        "accept failed on fd 0",
        "accept failed on fd 1",
        "accept failed on fd 2",
        "something else",
    ]


def test_after_the_window_the_next_line_says_how_many_were_left_out(logger, monkeypatch) -> None:
    log, stream, repeat = logger
    clock = [100.0]
    monkeypatch.setattr("meshwatch.collector.logs.time.monotonic", lambda: clock[0])
    for _ in range(10):
        log.error("disk full")
    clock[0] += repeat.window
    log.error("disk full")
    lines = _lines(stream)
    assert len(lines) == 4
    assert "suppressed" not in lines[0]
    assert lines[-1]["suppressed"] == 7
