"""GET /v1/stats and the state gauges agree with what was submitted and processed (and with the rows)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from squall.core.store import counters, polling
from tests.integration import effect_processings
from tests.integration.harness import System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def stats(system: System) -> dict[str, Any]:
    response = await system.client.get("/v1/stats")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def scrape(system: System) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's /metrics as {(sample name, sorted labels): value}."""
    response = await system.client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


async def truth(system: System) -> dict[str, Any]:
    """The same totals counted the slow way, over every row."""
    rows = await system.fetch("SELECT job, state, count(*) AS n FROM all_items GROUP BY job, state")
    items: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = items.setdefault(row["job"], {"pending": 0, "done": 0, "failed": 0})
        counts["pending" if row["state"] in ("pending", "running") else row["state"]] += row["n"]
    dead = await system.fetch("SELECT processing, count(*) AS n FROM tasks WHERE state = 'dead' GROUP BY 1")
    return {
        "accepted": await system.fetchval("SELECT count(*) FROM requests"),
        "processed": await system.fetchval("SELECT count(*) FROM requests WHERE processed"),
        "recorded": await system.fetchval("SELECT count(*) FROM requests WHERE recorded_at IS NOT NULL"),
        "items": items,
        "dead_tasks": {r["processing"]: r["n"] for r in dead},
        "backlog": await system.fetchval(
            "SELECT (SELECT coalesce(sum(item_count), 0) FROM requests WHERE recorded_at IS NULL)"
            " + (SELECT count(*) FROM all_items WHERE state IN ('pending', 'running'))"
        ),
    }


def as_truth(answer: dict[str, Any]) -> dict[str, Any]:
    requests = answer["requests"]
    assert requests["pending"] == requests["accepted"] - requests["processed"]
    return {
        "accepted": requests["accepted"],
        "processed": requests["processed"],
        "recorded": requests["recorded"],
        "items": answer["items"],
        "dead_tasks": answer["dead_tasks"],
        "backlog": answer["backlog"]["items"],
    }


async def test_stats_follow_intake_recording_and_processing(system: System) -> None:
    empty = await stats(system)
    assert empty == {
        "requests": {"accepted": 0, "processed": 0, "pending": 0, "recorded": 0},
        "items": {},
        "dead_tasks": {},
        "backlog": {"items": 0},
    }
    await system.stop_processors()  # accepted, not recorded yet: counted all the same
    for rid, items in (("a", [(1, "sum"), (2, "sum"), (3, "mul")]), ("b", [(4, "mul")]), ("c", [(5, "sum")])):
        await system.submit({"rid": rid, "items": [{"number": n, "job": j} for n, j in items]})

    async def accepted_three() -> dict[str, Any] | None:
        answer = await stats(system)
        return answer if answer["requests"]["accepted"] == 3 else None

    answer = await wait_for(accepted_three, what="3 accepted")
    assert answer["requests"] == {"accepted": 3, "processed": 0, "pending": 3, "recorded": 0}
    assert answer["backlog"] == {"items": 5}  # in requests not recorded yet
    assert as_truth(answer) == await truth(system)

    await system.start_processor()

    async def recorded() -> dict[str, Any] | None:
        answer = await stats(system)
        return answer if answer["requests"]["recorded"] == 3 else None

    answer = await wait_for(recorded, what="3 recorded")
    assert answer["items"] == {
        "sum": {"pending": 3, "done": 0, "failed": 0},
        "mul": {"pending": 2, "done": 0, "failed": 0},
    }
    assert answer["backlog"] == {"items": 5}  # recorded, pending
    assert as_truth(answer) == await truth(system)

    await system.start_scheduler()
    for rid in ("a", "b", "c"):
        await system.wait_processed(rid)

    async def processed() -> dict[str, Any] | None:
        answer = await stats(system)
        return answer if answer["requests"]["processed"] == 3 else None

    answer = await wait_for(processed, what="3 processed")
    assert answer["items"] == {
        "sum": {"pending": 0, "done": 3, "failed": 0},
        "mul": {"pending": 0, "done": 2, "failed": 0},
    }
    assert as_truth(answer) == await truth(system)

    # The gauges come from the same query.
    samples = await scrape(system)
    assert samples[("squall_requests", (("state", "processed"),))] == 3
    assert samples[("squall_requests", (("state", "pending"),))] == 0
    assert samples[("squall_items", (("processing", "sum"), ("state", "done")))] == 3
    assert samples[("squall_items", (("processing", "mul"), ("state", "done")))] == 2
    assert samples[("squall_items", (("processing", "mul"), ("state", "pending")))] == 0
    assert samples[("squall_backlog_items", ())] == answer["backlog"]["items"] == 0

    # Folding the deltas into the totals changes nothing that is read.
    assert await system.fetchval("SELECT count(*) FROM stat_deltas") > 0
    folded = await counters.fold_stat_deltas(system.engine)
    assert folded and folded > 0
    assert await system.fetchval("SELECT count(*) FROM stat_deltas") == 0
    again = await counters.read_stats(system.engine)
    assert again.accepted == 3 and again.processed == 3 and again.items["sum"]["done"] == 3


async def test_failures_dead_tasks_and_replays_are_counted(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.REFUSE_ONCE_CALLS.clear()  # fails its first call in this process
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit({"rid": "r1", "items": [{"number": n, "job": "refuse_once"} for n in (1, 2, 3)]})
    await wait_for(lambda: system.recorded_items(), what="recorded")
    task_id = await system.publish_poll("refuse_once", batch_size=10)

    async def dead() -> dict[str, Any] | None:
        answer = await stats(system)
        return answer if answer["dead_tasks"] else None

    answer = await wait_for(dead, what="a dead task")
    assert answer["dead_tasks"] == {"refuse_once": 1}
    assert answer["items"]["refuse_once"] == {"pending": 0, "done": 0, "failed": 3}
    # Its items all failed: the request is processed (nothing pending), with failures.
    assert answer["requests"]["processed"] == 1
    assert as_truth(answer) == await truth(system)
    samples = await scrape(system)
    assert samples[("squall_dead_tasks", (("processing", "refuse_once"),))] == 1
    assert samples[("squall_items", (("processing", "refuse_once"), ("state", "failed")))] == 3

    replay = await system.client.post(f"/v1/tasks/{task_id}/retry")
    assert replay.status_code == 202, replay.text

    async def replayed() -> dict[str, Any] | None:
        answer = await stats(system)
        done = answer["items"]["refuse_once"]["done"] == 3 and answer["requests"]["processed"] == 1
        return answer if done and not answer["dead_tasks"] else None

    answer = await wait_for(replayed, what="the replay done")
    assert answer["items"]["refuse_once"] == {"pending": 0, "done": 3, "failed": 0}
    assert as_truth(answer) == await truth(system)


async def test_stats_refuses_other_methods_with_json_405(system: System) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = await system.client.request(method, "/v1/stats", json={})
        assert response.status_code == 405, (method, response.text)
        assert response.headers["Allow"] == "GET"
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_stats_are_cached_and_one_query_serves_concurrent_callers(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = next(
        rule.target_kwargs["cache"]
        for rule in system.app.wildcard_router.rules
        if getattr(rule.target, "route", None) == "/v1/stats"
    )
    calls = 0
    read = counters.read_stats

    async def counting(engine: Any) -> counters.Stats:
        nonlocal calls
        calls += 1
        return await read(engine)

    monkeypatch.setattr(counters, "read_stats", counting)
    answers = await asyncio.gather(*(cache.get() for _ in range(20)))
    assert calls == 1 and all(a == answers[0] for a in answers)
    await cache.get()
    assert calls == 1  # cached for a second
    await asyncio.sleep(cache.max_age + 0.05)
    await cache.get()
    assert calls == 2


async def test_the_leaders_pending_gauge_is_the_stats_pending(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """``squall_processing_pending_items`` (scheduler leader) reads what ``/v1/stats`` calls pending:
    recorded items not done or failed yet, whether waiting, leased or waiting out a retry delay."""
    from prometheus_client import REGISTRY

    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)
    await system.submit({"rid": "g", "items": [{"number": n, "job": "record"} for n in range(30)]})
    await system.stop_processors_once_recorded(30)
    # A third of them leased by a poll task that never finishes: still pending.
    async with system.engine.begin() as conn:
        await polling.claim_items(conn, "record", uuid.uuid4(), 10, lease_seconds=600)
    scheduler = await system.start_scheduler()

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("squall_processing_pending_items", {"processing": "record"})

    async def exported() -> bool:
        return scheduler.leading and gauge() == 30

    await wait_for(exported, timeout=10, what="the leader's gauge")
    assert (await stats(system))["items"]["record"]["pending"] == 30
