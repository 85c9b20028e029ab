"""Retention against real PostgreSQL: expired finished work is deleted with everything that belongs to it,
unfinished work of any age is kept, dead letters are kept for their own period and stay replayable, the
lifetime counters do not move, and an expired rid can be submitted again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from squall.core import metrics
from squall.core.store import retention
from squall.scheduler.duties.retention import Retention
from tests.integration import effect_processings
from tests.integration.harness import SteadyLoad, System, make_settings, squall_cli, wait_for

HOUR = 3600.0
RETENTION_ENV = {"SQUALL_RETENTION__FINISHED_SECONDS": "3600", "SQUALL_RETENTION__DEAD_SECONDS": "10800"}
PERIODS = retention.Periods.of(finished_seconds=HOUR, dead_seconds=3 * HOUR)
MODULE = "tests.integration.effect_processings"
SAMPLE_SECONDS = 2.0
COUNTERS = "SELECT counter, n FROM stat_totals UNION ALL SELECT counter, n FROM stat_deltas"


async def _system(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> System:
    settings = make_settings(
        nats_url,
        database_url,
        processing_modules=[MODULE],
        processings={"sum": {"mode": "immediate"}},
        retention={"finished_seconds": HOUR, "dead_seconds": 3 * HOUR, "batch_size": 2},
    )
    return await system_factory(settings)


async def _age(system: System, rid: str, hours: float) -> None:
    """Make a request look processed (or, not recorded yet, accepted) ``hours`` ago."""
    await system.fetchval(
        "UPDATE requests SET processed_at = CASE WHEN processed THEN now() - make_interval(secs => $2) END, "
        "created_at = now() - make_interval(secs => $2) WHERE rid = $1 RETURNING rid",
        rid,
        hours * HOUR,
    )


async def _rows_of(system: System, rid: str) -> dict[str, int]:
    """Rows the request ``rid`` has in each table (its task id found from the tasks it left)."""
    task_id = await system.fetchval("SELECT id FROM tasks WHERE kind = 'request' AND rid = $1", rid)
    counts = {"requests": await system.fetchval("SELECT count(*) FROM requests WHERE rid = $1", rid)}
    for table, key in (("items", "request_task_id"), ("item_results", "request_task_id"), ("tasks", "id")):
        counts[table] = await system.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = $1", task_id)
    return counts


async def test_expired_finished_work_goes_and_unfinished_work_stays(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    small = [{"number": n, "job": "sum"} for n in range(3)]  # item rows
    large = [{"number": n, "job": "sum"} for n in range(20)]  # one result row
    for rid, items in (("old-1", small), ("old-2", large), ("old-3", small), ("young", small)):
        await system.submit({"rid": rid, "items": items})
        await system.wait_processed(rid)
    await system.stop_processors()
    await system.submit({"rid": "unrecorded", "items": small})  # accepted, never recorded
    for rid in ("old-1", "old-2", "old-3"):
        await _age(system, rid, hours=2)
    await _age(system, "unrecorded", hours=24 * 90)
    before = await system.fetch(
        "SELECT counter, n FROM stat_totals UNION ALL SELECT counter, n FROM stat_deltas"
    )
    assert (await _rows_of(system, "old-2"))["item_results"] == 1

    # Batches of two with a pause after each full one: three requests take two batches.
    deleted = await retention.run_pass(system.engine, PERIODS, batch_size=2, pause_seconds=0.01)

    assert deleted.rows["requests"] == 3 and deleted.rows["items"] == 6 and deleted.rows["item_results"] == 1
    for rid in ("old-1", "old-2", "old-3"):
        assert await _rows_of(system, rid) == {"requests": 0, "items": 0, "item_results": 0, "tasks": 0}
        assert (await system.client.get(f"/v1/requests/{rid}")).status_code == 404
    assert (await _rows_of(system, "young"))["requests"] == 1
    assert (await system.client.get("/v1/requests/unrecorded")).status_code == 200
    # Lifetime counters are not touched by retention.
    after = await system.fetch(
        "SELECT counter, n FROM stat_totals UNION ALL SELECT counter, n FROM stat_deltas"
    )
    assert _summed(after) == _summed(before)
    # A second pass finds nothing more.
    assert (await retention.run_pass(system.engine, PERIODS, batch_size=2)).total == 0


def _summed(rows: list[Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["counter"]] = totals.get(row["counter"], 0) + row["n"]
    return totals


async def test_an_expired_rid_can_be_submitted_again(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    body = {"rid": "again", "items": [{"number": 4, "job": "sum"}]}
    first = await system.submit(body)
    await system.wait_processed("again")
    await _age(system, "again", hours=2)
    assert (await retention.run_pass(system.engine, PERIODS, batch_size=10)).rows["requests"] == 1
    second = await system.submit(body, expect=202)  # a new request: the old one is forgotten
    assert second["created"] is True and second["task_id"] != first["task_id"]
    state = await system.wait_processed("again")
    assert [i["result"] for i in state["items"]] == [6]


async def test_dead_letters_are_kept_for_their_period_and_stay_replayable(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.REFUSE_ONCE_NOW_CALLS.clear()
    system = await _system(nats_url, database_url, system_factory)
    await system.start_scheduler()
    dead = await system.submit(
        {"rid": "dead", "items": [{"number": n, "job": "refuse_once_now"} for n in (1, 2)]}
    )
    await system.wait_processed("dead")
    await _age(system, "dead", hours=2)  # past the finished period, within the dead one
    assert (await retention.run_pass(system.engine, PERIODS, batch_size=10)).total == 0
    assert (await _rows_of(system, "dead"))["requests"] == 1
    replay = await system.client.post(f"/v1/tasks/{dead['task_id']}/retry")
    assert replay.status_code == 202, replay.text

    async def results() -> list[Any] | None:
        state = await system.request_state("dead")
        found = [i["result"] for i in state["items"]]
        return found if state["processed"] and found == [6, 7] else None

    assert await wait_for(results, timeout=30, what="the replayed dead letter processed") == [6, 7]
    # A dead letter past its own period goes, dead task and all.
    effect_processings.REFUSE_ONCE_NOW_CALLS.clear()
    await system.submit({"rid": "dead-too", "items": [{"number": 3, "job": "refuse_once_now"}]})
    await system.wait_processed("dead-too")
    await _age(system, "dead-too", hours=4)
    await retention.run_pass(system.engine, PERIODS, batch_size=10)
    assert await _rows_of(system, "dead-too") == {"requests": 0, "items": 0, "item_results": 0, "tasks": 0}


async def test_finished_poll_tasks_expire_and_prune_dry_run_deletes_nothing(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    await system.start_scheduler()
    await system.submit({"rid": "batch", "items": [{"number": n, "job": "mul"} for n in range(3)]})
    await system.wait_processed("batch")

    async def finished_polls() -> int:
        count: int = await system.fetchval(
            "SELECT count(*) FROM tasks WHERE kind = 'poll' AND finished_at IS NOT NULL"
        )
        return count

    assert await wait_for(finished_polls, what="finished poll tasks") > 0
    aged = await system.fetchval(
        "WITH a AS (UPDATE tasks SET finished_at = now() - interval '2 hours' "
        "WHERE kind = 'poll' AND finished_at IS NOT NULL RETURNING 1) SELECT count(*) FROM a"
    )
    await _age(system, "batch", hours=2)
    dry = await asyncio.to_thread(squall_cli, system.settings, "prune", "--dry-run", env=RETENTION_ENV)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["deleted"]["requests"] == 1
    assert report["deleted"]["tasks"] >= aged + 1  # the aged poll tasks and the request's own task
    assert (await _rows_of(system, "batch"))["requests"] == 1  # nothing deleted
    done = await asyncio.to_thread(squall_cli, system.settings, "prune", env=RETENTION_ENV)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == report["deleted"]
    remaining = await system.fetchval(
        "SELECT count(*) FROM tasks WHERE kind = 'poll' AND finished_at < now() - interval '1 hour'"
    )
    assert remaining == 0 and (await _rows_of(system, "batch"))["requests"] == 0


async def test_the_leaders_duty_deletes_and_shows_what_is_kept(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    for rid in ("gone", "kept"):
        await system.submit({"rid": rid, "items": [{"number": 1, "job": "sum"}]})
        await system.wait_processed(rid)
    await _age(system, "gone", hours=2)
    await _age(system, "kept", hours=0.5)
    deleted_before = metrics.RETENTION_DELETED.labels("requests")._value.get()
    # The rows gauge is PostgreSQL's estimate: exact after ANALYZE on a small table, kept until the next.
    await system.fetchval("ANALYZE requests")
    requests_at_analyze = await system.fetchval("SELECT count(*) FROM requests")

    await Retention(system.engine, system.settings.retention).run_once()

    assert metrics.RETENTION_DELETED.labels("requests")._value.get() - deleted_before == 1
    assert metrics.RETENTION_PERIOD.labels("finished")._value.get() == HOUR
    assert metrics.DB_TABLE_BYTES.labels("requests")._value.get() > 0
    assert metrics.DB_TABLE_ROWS.labels("requests")._value.get() == requests_at_analyze >= 2
    oldest = metrics.RETENTION_OLDEST.labels("requests")._value.get()
    assert 0.5 * HOUR <= oldest < HOUR
    view = (await system.client.get("/v1/retention")).json()
    assert view["finished_seconds"] == HOUR and view["dead_seconds"] == 3 * HOUR
    assert set(view["table_bytes"]) == set(retention.TABLES) and view["table_bytes"]["requests"] > 0
    assert 0.5 * HOUR <= view["oldest_finished_seconds"]["requests"] < HOUR


@pytest.mark.slow
async def test_a_minute_of_load_keeps_the_tables_bounded(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """Retention of seconds under a steady load: what is kept stays what the last seconds brought, however
    long the load runs, and everything goes once the load stops."""
    period = 5.0
    settings = make_settings(
        nats_url,
        database_url,
        processings={"sum": {"mode": "immediate"}},
        retention={"finished_seconds": period, "dead_seconds": period, "interval_seconds": 1},
    )
    system = await system_factory(settings)
    await system.start_scheduler()
    load = SteadyLoad(system.base_url, ["sum"], items=10)
    clients = [asyncio.create_task(load.client(index)) for index in range(4)]
    # (seconds into the load, requests kept, accepted so far), from the start, when nothing was.
    samples: list[tuple[float, int, int]] = [(0.0, 0, 0)]
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            await asyncio.sleep(SAMPLE_SECONDS)  # the measurement's pace, not a wait for an event
            kept = await system.fetchval("SELECT count(*) FROM requests")
            samples.append((time.monotonic() - started, kept, len(load.accepted)))
    finally:
        load.running = False
        await asyncio.gather(*clients)
    # A request accepted more than the period, a pass and a margin ago has expired: what is kept is at most
    # what came since (and the few whose answer was still on its way).
    window = period + 10.0
    late = [(at, kept, so_far) for at, kept, so_far in samples if at > window]
    assert late, samples
    for at, kept, so_far in late:
        expired = max(accepted for t, _, accepted in samples if t <= at - window)
        assert kept <= so_far - expired + len(clients), (at, kept, so_far, expired)
    # Bounded, not growing with the load: far fewer kept than accepted.
    assert len(load.accepted) > 3 * max(kept for _, kept, _ in late), samples

    async def all_gone() -> bool:
        return await system.fetchval("SELECT count(*) FROM requests") == 0

    await wait_for(all_gone, timeout=30, what="every request expired after the load")
    assert await system.fetchval("SELECT count(*) FROM items") == 0
    assert await system.fetchval("SELECT count(*) FROM item_results") == 0
