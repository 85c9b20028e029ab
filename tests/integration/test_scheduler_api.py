"""Schedules and scheduler replicas through the API, against a running leader."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.integration.harness import System, wait_for


async def _leading(system: System) -> None:
    async def leader() -> bool:
        return (await system.client.get("/v1/schedulers")).json()["leader"] is not None

    await wait_for(leader, what="a leader")


async def test_default_schedules_and_schedulers_view(system: System) -> None:
    await system.start_scheduler("sched-a")
    await system.start_scheduler("sched-b")
    await _leading(system)
    view = (await system.client.get("/v1/schedulers")).json()
    assert view["leader"] in ("sched-a", "sched-b")
    assert {i["id"] for i in view["instances"]} == {"sched-a", "sched-b"}
    assert all(set(i) == {"id", "host", "started_at", "last_seen"} for i in view["instances"])
    listed = (await system.client.get("/v1/schedules")).json()["schedules"]
    defaults = {s["name"]: s for s in listed}
    assert set(defaults) == {"sum", "mul", "square"}  # every batch processing
    assert defaults["sum"]["origin"] == "default" and defaults["sum"]["interval_seconds"] == 0.2
    assert defaults["sum"]["max_batches_per_tick"] == 64  # enough for the processors to be the bound


async def test_ticks_emit_for_a_backlog_and_skip_an_empty_one(system: System) -> None:
    await system.start_scheduler()
    await _leading(system)

    async def outcomes() -> set[str]:
        ticks = (await system.client.get("/v1/schedules/mul")).json()["recent_ticks"]
        return {t["outcome"] for t in ticks}

    await wait_for(lambda: _has(outcomes, "skipped"), what="a skipped tick")
    await system.submit({"rid": "t1", "items": [{"number": 2, "job": "mul"}]})
    await system.wait_processed("t1")
    await wait_for(lambda: _has(outcomes, "emitted"), what="an emitted tick")
    # The scheduler's metrics (this test's replicas share the process registry).
    assert REGISTRY.get_sample_value("squall_scheduler_is_leader") == 1
    assert (
        REGISTRY.get_sample_value("squall_scheduler_ticks_total", {"schedule": "mul", "outcome": "emitted"})
        or 0
    ) >= 1
    assert (REGISTRY.get_sample_value("squall_scheduler_tick_lag_seconds_count") or 0) >= 1


async def _has(outcomes: Any, outcome: str) -> bool:
    return outcome in await outcomes()


async def test_create_patch_run_delete(system: System) -> None:
    await system.start_scheduler()
    await _leading(system)
    created = await system.client.post(
        "/v1/schedules",
        json={
            "name": "nightly-sum",
            "processing": "sum",
            "cron": "0 3 * * *",
            "timezone": "Europe/Paris",
            "misfire_policy": "skip",
            "batch_size": 50,
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["cron"] == "0 3 * * *" and body["batch_size"] == 50 and body["origin"] == "api"
    assert created.headers["Location"] == "/v1/schedules/nightly-sum"
    again = await system.client.post(
        "/v1/schedules", json={"name": "nightly-sum", "processing": "sum", "interval_seconds": 5}
    )
    assert again.status_code == 409

    patched = await system.client.patch("/v1/schedules/nightly-sum", json={"interval_seconds": 0.5})
    assert patched.status_code == 200
    assert patched.json()["interval_seconds"] == 0.5 and patched.json()["cron"] is None

    await system.submit({"rid": "r1", "items": [{"number": 1, "job": "sum"}]})
    run = await system.client.post("/v1/schedules/nightly-sum/run")
    assert run.status_code == 202

    async def fired() -> bool:
        ticks = (await system.client.get("/v1/schedules/nightly-sum")).json()["recent_ticks"]
        return any(t["outcome"] in ("emitted", "skipped") for t in ticks)

    await wait_for(fired, what="the manual tick")
    assert (await system.client.delete("/v1/schedules/nightly-sum")).status_code == 204
    assert (await system.client.get("/v1/schedules/nightly-sum")).status_code == 404
    assert (await system.client.delete("/v1/schedules/nightly-sum")).status_code == 404
    assert (await system.client.post("/v1/schedules/nightly-sum/run")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"name": "x", "processing": "sum", "cron": "not cron"}, 422, "invalid_value", "cron"),
        (
            {"name": "x", "processing": "sum", "cron": "* * * * *", "interval_seconds": 1},
            422,
            "invalid_value",
            None,
        ),
        ({"name": "x", "processing": "sum"}, 422, "invalid_value", None),
        ({"name": "x", "processing": "nope", "interval_seconds": 1}, 422, "unknown_job", "processing"),
        ({"name": "X Y", "processing": "sum", "interval_seconds": 1}, 422, "invalid_value", "name"),
        ({"name": "x", "processing": "sum", "interval_seconds": 0}, 422, "invalid_value", "interval_seconds"),
        (
            {"name": "x", "processing": "sum", "interval_seconds": 1e-9},
            422,
            "invalid_value",
            "interval_seconds",
        ),
        (
            {"name": "x", "processing": "sum", "interval_seconds": "1"},
            422,
            "invalid_value",
            "interval_seconds",
        ),
        (
            {"name": "x", "processing": "sum", "interval_seconds": 1, "every": 2},
            422,
            "unknown_field",
            "every",
        ),
        (
            {"name": "x", "processing": "sum", "cron": "* * * * *", "timezone": "Mars/Olympus"},
            422,
            "invalid_value",
            "timezone",
        ),
        (
            {"name": "x", "processing": "sum", "interval_seconds": 1, "misfire_policy": "later"},
            422,
            "invalid_value",
            "misfire_policy",
        ),
        ({"processing": "sum", "interval_seconds": 1}, 422, "missing_field", "name"),
    ],
)
async def test_invalid_schedules(
    system: System, body: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    response = await system.client.post("/v1/schedules", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error


async def test_an_immediate_processing_cannot_be_scheduled(
    nats_url: str, database_url: str, system_factory: Any
) -> None:
    from tests.integration.harness import make_settings

    system = await system_factory(
        make_settings(nats_url, database_url, processings={"sum": {"mode": "immediate"}})
    )
    response = await system.client.post(
        "/v1/schedules", json={"name": "s", "processing": "sum", "interval_seconds": 1}
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "processing"


async def test_patch_of_unknown_schedule_is_404(system: System) -> None:
    response = await system.client.patch("/v1/schedules/ghost", json={"enabled": False})
    assert response.status_code == 404
