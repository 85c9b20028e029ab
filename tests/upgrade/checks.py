"""What must hold after each phase of the rehearsal, whichever release wrote what, read from the tables."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from typing import Any

import asyncpg
import httpx

from tests.integration.harness import wait_for
from tests.upgrade.fleet import Fleet
from tests.upgrade.load import JOBS, RollingLoad


def expected_result(job: str, number: int) -> int:
    return number + 2 if job == "sum" else number * 2  # the builtin sum and mul


class Database:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            await conn.close()

    async def execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


async def check_everything(
    db: Database, fleet: Fleet, load: RollingLoad, load_started: dt.datetime, items: int
) -> dict[str, Any]:
    """Every check of a phase, in order (the load stopped); figures for the report."""
    assert load.unexpected == [], f"answers no client may see: {load.unexpected[:10]}"
    await _every_accepted_request_processed(db, fleet, load)
    rows = await _every_item_right(db, load, items)
    await _one_effect_per_item(db, rows)
    await _nothing_stuck(db)
    await _stats_agree(load)
    ticks = await _ticks_once_each(db)
    await _dependency_stayed_up(db, load_started)
    assert fleet.errors() == [], fleet.errors_summary()
    return {"ticks": ticks}


async def _every_accepted_request_processed(db: Database, fleet: Fleet, load: RollingLoad) -> None:
    async def all_processed() -> bool:
        done = await db.fetchval("SELECT count(*) FROM requests WHERE processed")
        return bool(done == len(load.accepted))

    await fleet.wait(
        all_processed, timeout=120, what=f"every accepted request processed ({len(load.accepted)})"
    )


async def _every_item_right(db: Database, load: RollingLoad, items: int) -> list[asyncpg.Record]:
    """Every accepted request, and only those, with each item done once with its job's result."""
    rids = {r["rid"] for r in await db.fetch("SELECT rid FROM requests")}
    assert rids == set(load.accepted), (len(rids - set(load.accepted)), len(set(load.accepted) - rids))
    rows = await db.fetch(
        "SELECT r.rid, i.position, i.number, i.job, i.state, i.result, i.lease_until "
        "FROM all_items i JOIN requests r ON r.task_id = i.request_task_id"
    )
    assert len(rows) == items * len(load.accepted), (len(rows), len(load.accepted))
    for row in rows:
        job, numbers = load.accepted[row["rid"]]
        assert row["job"] == job and row["number"] == numbers[row["position"]], dict(row)
        assert row["state"] == "done" and row["lease_until"] is None, dict(row)
        assert row["result"] == str(expected_result(job, row["number"])), dict(row)
    return rows


async def _one_effect_per_item(db: Database, rows: list[asyncpg.Record]) -> None:
    """The effects table (a trigger on items appends a row at every result write) has one row per item."""
    effects = await db.fetch("SELECT request_task_id, position, count(*) AS n FROM effects GROUP BY 1, 2")
    duplicated = [dict(e) for e in effects if e["n"] > 1]
    assert duplicated == [], f"items written more than once: {duplicated[:10]}"
    assert len(effects) == len(rows), (len(effects), len(rows))


async def _nothing_stuck(db: Database) -> None:
    """Every request recorded, no item pending or claimed, no task queued, running or dead."""

    async def settled() -> bool:
        busy = await db.fetchval("SELECT count(*) FROM tasks WHERE state IN ('queued', 'running')")
        return bool(busy == 0)

    await wait_for(settled, timeout=60, interval=0.2, what="no task left queued or running")
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE state <> 'succeeded'") == 0
    assert await db.fetchval("SELECT count(*) FROM requests WHERE recorded_at IS NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM all_items WHERE state <> 'done'") == 0


async def _stats_agree(load: RollingLoad) -> None:
    async def counted() -> dict[str, Any] | None:  # /v1/stats is cached for a second
        async with httpx.AsyncClient(timeout=10.0) as http:
            stats: dict[str, Any] = (await http.get(f"{load.base_url}/v1/stats")).json()
        requests = stats["requests"]
        return stats if requests["accepted"] == requests["processed"] == len(load.accepted) else None

    stats = await wait_for(counted, timeout=20, what="/v1/stats agreeing with the requests accepted")
    assert stats is not None  # wait_for returns only a truthy answer
    for job in JOBS:
        items = sum(len(numbers) for accepted_job, numbers in load.accepted.values() if accepted_job == job)
        assert stats["items"][job] == {"pending": 0, "done": items, "failed": 0}, stats


async def _ticks_once_each(db: Database) -> dict[str, dict[str, int]]:
    """Each schedule's ticks form one unbroken series of due times, each recorded once (whichever release
    led), none held (the dependency stayed up); one poll task per batch emitted, each finished once."""
    schedules = await db.fetch("SELECT name, interval_seconds FROM schedules ORDER BY name")
    outcomes: dict[str, dict[str, int]] = {}
    emitted = 0
    for schedule in schedules:
        ticks = await db.fetch(
            "SELECT due_at, outcome, tasks FROM schedule_ticks WHERE schedule = $1 ORDER BY due_at",
            schedule["name"],
        )
        gaps = {round((b["due_at"] - a["due_at"]).total_seconds(), 6) for a, b in itertools.pairwise(ticks)}
        assert gaps == {schedule["interval_seconds"]}, (schedule["name"], gaps)
        outcomes[schedule["name"]] = dict(Counter(t["outcome"] for t in ticks))
        assert "held" not in outcomes[schedule["name"]], outcomes
        emitted += sum(t["tasks"] for t in ticks if t["outcome"] == "emitted")
    polls = await db.fetch("SELECT state FROM tasks WHERE kind = 'poll'")
    assert len(polls) == emitted and {p["state"] for p in polls} == {"succeeded"}, (len(polls), emitted)
    assert outcomes["mul"]["emitted"] > 0, outcomes
    return outcomes


async def _dependency_stayed_up(db: Database, load_started: dt.datetime) -> None:
    """The dependency check ran throughout (checked since the last hand-over) and never saw it down."""
    row = (await db.fetch("SELECT state, since, last_checked_at, last_error FROM dependencies"))[0]
    assert row["state"] == "up" and row["since"] < load_started, dict(row)
    fresh = await db.fetchval("SELECT now() - $1::timestamptz < interval '5 seconds'", row["last_checked_at"])
    assert fresh, dict(row)
