"""The operator API's SQL (gateway): schedules, processings (pause, dependencies, counts) and the replay of
a dead task."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core.store.counters import read_stats
from squall.core.store.driver import autocommit_connection, iso_time
from squall.core.store.item_rules import CLAIMABLE


async def replay_task(conn: AsyncConnection, task_id: uuid.UUID) -> tuple[str, Any]:
    """Make a dead task run again: its failed items pending with fresh attempts (and their requests no
    longer processed). A poll task goes back to queued (the caller publishes it again); a request task's
    items — failed at recording, never claimed — are left to their processing's schedule, and the task,
    whose work (recording) is done, is succeeded again.

    Answers ("replayed", row), ("not_dead", row) or ("missing", None). Only a dead task is replayed, so
    two replays of one task run it once."""
    row = (
        await conn.execute(
            text("SELECT id, kind, state, processing, batch_size FROM tasks WHERE id = :id FOR UPDATE"),
            {"id": task_id},
        )
    ).first()
    if row is None:
        return "missing", None
    if row.state != "dead":
        return "not_dead", row
    await conn.execute(
        text(
            "UPDATE tasks SET state = CASE WHEN kind = 'request' THEN 'succeeded' ELSE 'queued' END, "
            "error = NULL, updated_at = now(), finished_at = NULL WHERE id = :id"
        ),
        {"id": task_id},
    )
    await conn.execute(
        text(
            """
            WITH reset AS (
                UPDATE items SET state = 'pending', attempts = 0, error = NULL, not_before = NULL,
                                 updated_at = now()
                WHERE state = 'failed'
                  AND (claim_task_id = :id OR (request_task_id = :id AND claim_task_id IS NULL))
                RETURNING request_task_id, job
            ), reopened AS (
                UPDATE requests SET processed = false, processed_at = NULL
                WHERE task_id IN (SELECT request_task_id FROM reset) AND processed
                RETURNING task_id
            )
            INSERT INTO stat_deltas (counter, processing, n)
            SELECT 'items_failed', job, -count(*) FROM reset GROUP BY job
            UNION ALL
            SELECT 'requests_processed', '', -count(*) FROM reopened HAVING count(*) > 0
            """
        ),
        {"id": task_id},
    )
    return "replayed", row


_SCHEDULE_COLUMNS = (
    "name, processing, interval_seconds, cron, timezone, enabled, batch_size, max_batches_per_tick, "
    "misfire_policy, catch_up_limit, jitter_seconds, next_due_at, origin, created_at, updated_at"
)


def _schedule(row: Any) -> dict[str, Any]:
    schedule = dict(row._mapping)
    for key in ("next_due_at", "created_at", "updated_at"):
        schedule[key] = iso_time(schedule[key])
    return schedule


async def list_schedules(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(text(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name"))
        return [_schedule(r) for r in rows]


async def get_schedule(engine: AsyncEngine, name: str, ticks: int = 20) -> dict[str, Any] | None:
    async with autocommit_connection(engine) as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = :n"), {"n": name}
            )
        ).first()
        if row is None:
            return None
        recent = await conn.execute(
            text(
                "SELECT due_at, outcome, tasks, detail, emitted_at FROM schedule_ticks WHERE schedule = :n "
                "ORDER BY due_at DESC LIMIT :limit"
            ),
            {"n": name, "limit": ticks},
        )
        schedule = _schedule(row)
        schedule["recent_ticks"] = [
            {
                "due_at": iso_time(t.due_at),
                "outcome": t.outcome,
                "tasks": t.tasks,
                "detail": t.detail,
                "emitted_at": iso_time(t.emitted_at),
            }
            for t in recent
        ]
        return schedule


async def create_schedule(engine: AsyncEngine, values: dict[str, Any], first_due: dt.datetime) -> bool:
    """False if a schedule of that name exists."""
    columns = [*values, "next_due_at"]
    names, placeholders = ", ".join(columns), ", ".join(":" + c for c in columns)
    sql = (
        f"INSERT INTO schedules ({names}) VALUES ({placeholders}) "
        "ON CONFLICT (name) DO NOTHING RETURNING name"
    )
    return await _changed_a_row(engine, sql, {**values, "next_due_at": first_due})


async def update_schedule(
    engine: AsyncEngine, name: str, changes: dict[str, Any], next_due: dt.datetime | None
) -> bool:
    """Apply changes (the keys are validated field names); False if there is no such schedule."""
    if next_due is not None:
        changes = {**changes, "next_due_at": next_due}
    assignments = ", ".join(f"{column} = :{column}" for column in changes)
    sql = (
        f"UPDATE schedules SET {assignments + ', ' if assignments else ''}updated_at = now() "
        "WHERE name = :name RETURNING name"
    )
    return await _changed_a_row(engine, sql, {**changes, "name": name})


async def delete_schedule(engine: AsyncEngine, name: str) -> bool:
    return await _changed_a_row(engine, "DELETE FROM schedules WHERE name = :n RETURNING name", {"n": name})


async def _changed_a_row(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> bool:
    """Run a statement that returns the row it changed; whether there was one."""
    async with autocommit_connection(engine) as conn:
        row = (await conn.execute(text(sql), params)).first()
    return row is not None


async def run_schedule_now(engine: AsyncEngine, name: str) -> dt.datetime | None:
    """Make the schedule due now (the leader fires it at once); its next due time, or None if unknown."""
    async with autocommit_connection(engine) as conn:
        return (
            await conn.execute(
                text("UPDATE schedules SET next_due_at = now() WHERE name = :n RETURNING next_due_at"),
                {"n": name},
            )
        ).scalar()


async def processing_settings(engine: AsyncEngine) -> dict[str, tuple[bool, list[str] | None]]:
    """(paused, dependencies override) by processing name."""
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(text("SELECT name, paused, dependencies FROM processing_settings"))
        return {r.name: (r.paused, r.dependencies) for r in rows}


async def claimable_counts(engine: AsyncEngine) -> dict[str, int]:
    """Items a poll task could take now, by processing: a count over the backlog, for an operator's view
    (``GET /v1/processings``), not for anything polled every second (see :func:`pending_counts`)."""
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(
            text(
                f"""
                SELECT job, sum(n) AS n FROM (
                    SELECT job, count(*) AS n FROM items WHERE {CLAIMABLE} GROUP BY job
                    UNION ALL
                    SELECT job, sum(item_count) FROM item_chunks GROUP BY job
                ) AS claimable GROUP BY job
                """
            )
        )
        return {r.job: int(r.n) for r in rows}


async def pending_counts(engine: AsyncEngine) -> dict[str, int]:
    """Items recorded and not done or failed yet, by processing (waiting, being processed or waiting out a
    retry delay), from the transactional counters: counting the items themselves grows with the backlog,
    and the scheduler leader asks every second."""
    return {name: counts["pending"] for name, counts in (await read_stats(engine)).items.items()}


async def patch_processing(
    engine: AsyncEngine, name: str, paused: bool | None, deps: list[str] | None
) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO processing_settings (name, paused, dependencies)
                VALUES (:n, coalesce(:paused, false), CAST(:deps AS text[]))
                ON CONFLICT (name) DO UPDATE SET
                    paused = coalesce(:paused, processing_settings.paused),
                    dependencies = CASE WHEN :set_deps THEN CAST(:deps AS text[])
                                        ELSE processing_settings.dependencies END,
                    updated_at = now()
                """
            ),
            {"n": name, "paused": paused, "deps": deps, "set_deps": deps is not None},
        )
