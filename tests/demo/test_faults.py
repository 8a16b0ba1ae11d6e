"""Fault flags: what a user switches with `meshwatch-demo fault` changes what the service answers."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from fastapi.testclient import TestClient

from meshwatch.demo._app import create_app
from meshwatch.demo.cli import refusal
from meshwatch.demo.faults import FaultState, FaultUpdate, InjectedFault


def _app(dependencies: tuple[str, ...] = ("redis", "db")) -> tuple[TestClient, FaultState]:
    app, faults, _ = create_app("unit", dependencies=dependencies, telemetry=False)

    @app.get("/work")
    async def work() -> dict[str, str]:
        return {"ok": "yes"}

    return TestClient(app), faults


def test_partial_updates_keep_other_faults_and_clear_resets() -> None:
    state = FaultState("payments", ("fraud",))
    state.update(FaultUpdate(error_rate=0.2))
    state.update(FaultUpdate(latency_ms=300))
    state.update(FaultUpdate(down=["fraud"]))
    assert state.faults.as_dict() == {"error_rate": 0.2, "latency_ms": 300, "down": ["fraud"]}
    assert state.is_down("fraud")
    state.clear()
    assert not state.faults.active and not state.is_down("fraud")


def test_unknown_dependency_is_refused_naming_the_valid_ones() -> None:
    state = FaultState("payments", ("fraud",))
    with pytest.raises(ValueError, match="payments has no dependency redis; it depends on: fraud"):
        state.update(FaultUpdate(down=["redis"]))
    assert not state.faults.active  # nothing half-applied


def test_error_rate_fails_about_that_share_of_draws() -> None:
    state = FaultState("orders", rng=random.Random(7))
    state.update(FaultUpdate(error_rate=0.2))
    failures = sum(state.should_fail() for _ in range(10_000))
    assert 1_800 < failures < 2_200
    state.update(FaultUpdate(error_rate=0.0))
    assert not any(state.should_fail() for _ in range(1_000))


def test_apply_raises_for_message_handlers() -> None:
    state = FaultState("notifications", rng=random.Random(1))
    state.update(FaultUpdate(error_rate=1.0))
    with pytest.raises(InjectedFault, match="injected fault in notifications"):
        asyncio.run(state.apply())


def test_admin_endpoint_switches_faults_at_run_time() -> None:
    client, _ = _app()
    assert client.get("/work").status_code == 200
    answer = client.put("/admin/faults", json={"error_rate": 1.0})
    assert answer.status_code == 200 and answer.json()["error_rate"] == 1.0
    failed = client.get("/work")
    assert failed.status_code == 500 and failed.json()["error"] == "injected fault"
    assert client.get("/healthz").status_code == 200  # health and admin are never faulted
    assert client.delete("/admin/faults").json()["error_rate"] == 0.0
    assert client.get("/work").status_code == 200


def test_latency_is_added_to_requests() -> None:
    client, _ = _app()
    client.put("/admin/faults", json={"latency_ms": 200})
    began = time.monotonic()
    assert client.get("/work").status_code == 200
    assert time.monotonic() - began >= 0.2


def test_bad_fault_requests_get_clear_errors() -> None:
    client, faults = _app(("redis",))
    unknown = client.put("/admin/faults", json={"down": ["kafka"]})
    assert unknown.status_code == 400 and "it depends on: redis" in unknown.json()["detail"]
    out_of_range = client.put("/admin/faults", json={"error_rate": 1.5, "latency_ms": "slow"})
    assert out_of_range.status_code == 422
    # One sentence naming each field, not pydantic's error list.
    assert out_of_range.json() == {
        "error": "invalid request: error_rate: Input should be less than or equal to 1 (got 1.5); "
        "latency_ms: Input should be a valid integer, unable to parse string as an integer (got 'slow')",
        "service": "unit",
    }
    assert refusal(out_of_range.content) == out_of_range.json()["error"]
    assert refusal(unknown.content) == "unit has no dependency kafka; it depends on: redis"
    assert refusal(b"<html>502</html>") == "<html>502</html>"
    assert not faults.faults.active


def test_a_missing_field_is_named() -> None:
    app, _, _ = create_app("unit", telemetry=False)

    @app.post("/buy")
    async def buy(order: FaultUpdate, quantity: int) -> dict[str, str]:
        return {"ok": "yes"}

    answer = TestClient(app).post("/buy", content=b"{")
    assert answer.status_code == 422
    message = answer.json()["error"]
    assert message.startswith("invalid request: ") and "quantity: Field required" in message, message


def test_dependency_down_marks_only_that_dependency() -> None:
    client, faults = _app(("redis", "db"))
    client.put("/admin/faults", json={"down": ["redis"]})
    assert faults.is_down("redis") and not faults.is_down("db")
    assert client.get("/admin/faults").json()["down"] == ["redis"]
