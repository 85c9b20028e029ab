"""The scheduler: leadership lease and instances, due schedules, the ticks they fire and the poll tasks
those emit, and what holds a processing's ticks back."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core.store.driver import autocommit_connection, iso_time
from squall.core.store.item_rules import CLAIMABLE


async def renew_leadership(engine: AsyncEngine, me: str, ttl_seconds: float) -> int | None:
    """Take or keep the leadership lease; the epoch while this instance leads, None otherwise.

    The epoch changes whenever the lease changes hands (or lapses and is taken again): it fences a leader
    that paused past its lease out of every tick it might still try to fire."""
    async with autocommit_connection(engine) as conn:
        row = (
            await conn.execute(
                text(
                    """
                    UPDATE scheduler_leader SET
                        epoch = CASE WHEN holder = :me AND expires_at > now() THEN epoch ELSE epoch + 1 END,
                        acquired_at = CASE WHEN holder = :me AND expires_at > now() THEN acquired_at
                                           ELSE now() END,
                        holder = :me,
                        expires_at = now() + make_interval(secs => :ttl)
                    WHERE id = 1 AND (holder = :me OR holder IS NULL OR expires_at <= now())
                    RETURNING epoch
                    """
                ),
                {"me": me, "ttl": ttl_seconds},
            )
        ).first()
    return int(row.epoch) if row is not None else None


async def resign_leadership(engine: AsyncEngine, me: str) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text("UPDATE scheduler_leader SET expires_at = now() WHERE id = 1 AND holder = :me"), {"me": me}
        )


async def heartbeat_instance(engine: AsyncEngine, me: str, host: str, started_at: dt.datetime) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO scheduler_instances (id, host, started_at, last_seen)
                VALUES (:id, :host, :started, now())
                ON CONFLICT (id) DO UPDATE SET last_seen = now()
                """
            ),
            {"id": me, "host": host, "started": started_at},
        )


async def leave_instances(engine: AsyncEngine, me: str) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(text("DELETE FROM scheduler_instances WHERE id = :id"), {"id": me})


async def schedulers_view(engine: AsyncEngine, seen_within_seconds: float = 30.0) -> dict[str, Any]:
    async with autocommit_connection(engine) as conn:
        leader = (
            await conn.execute(
                text("SELECT holder FROM scheduler_leader WHERE id = 1 AND expires_at > now()")
            )
        ).scalar()
        rows = await conn.execute(
            text(
                """
                SELECT id, host, started_at, last_seen FROM scheduler_instances
                WHERE last_seen > now() - make_interval(secs => :within) ORDER BY started_at, id
                """
            ),
            {"within": seen_within_seconds},
        )
        instances = [
            {
                "id": r.id,
                "host": r.host,
                "started_at": iso_time(r.started_at),
                "last_seen": iso_time(r.last_seen),
            }
            for r in rows
        ]
    return {"leader": leader, "instances": instances}


async def prune(engine: AsyncEngine, keep_ticks_days: float, forget_instances_seconds: float) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text("DELETE FROM schedule_ticks WHERE emitted_at < now() - make_interval(days => :d)"),
            {"d": int(keep_ticks_days)},
        )
        await conn.execute(
            text("DELETE FROM scheduler_instances WHERE last_seen < now() - make_interval(secs => :s)"),
            {"s": forget_instances_seconds},
        )


async def ensure_default_schedule(
    engine: AsyncEngine, processing: str, interval_seconds: float, batch_size: int
) -> None:
    """Every processing gets a schedule named after it, unless one exists already: a batch processing's
    polls its items; an immediate processing's picks up the items waiting for a retry."""
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO schedules (name, processing, interval_seconds, batch_size, next_due_at, origin)
                VALUES (:name, :name, :interval, :batch, now() + make_interval(secs => :interval), 'default')
                ON CONFLICT (name) DO NOTHING
                """
            ),
            {"name": processing, "interval": interval_seconds, "batch": batch_size},
        )


async def due_schedules(engine: AsyncEngine) -> list[tuple[str, dt.datetime, float]]:
    """(name, next due time, jitter) of enabled schedules, soonest first."""
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(
            text("SELECT name, next_due_at, jitter_seconds FROM schedules WHERE enabled ORDER BY next_due_at")
        )
        return [(r.name, r.next_due_at, r.jitter_seconds) for r in rows]


async def lock_schedule(conn: AsyncConnection, name: str) -> Any:
    """The schedule row, locked for this transaction (None if deleted or disabled meanwhile)."""
    return (
        await conn.execute(
            text("SELECT *, now() AS db_now FROM schedules WHERE name = :n AND enabled FOR UPDATE"),
            {"n": name},
        )
    ).first()


async def still_leader(conn: AsyncConnection, me: str, epoch: int) -> bool:
    row = (
        await conn.execute(
            text(
                "SELECT 1 FROM scheduler_leader WHERE id = 1 AND holder = :me AND epoch = :epoch "
                "AND expires_at > now() FOR SHARE"
            ),
            {"me": me, "epoch": epoch},
        )
    ).first()
    return row is not None


async def gate(conn: AsyncConnection, processing: str, registered: Sequence[str]) -> str | None:
    """Why a processing's work must wait (paused, or a needed dependency down), or None to go ahead."""
    row = (
        await conn.execute(
            text(
                """
                SELECT coalesce(ps.paused, false) AS paused,
                       (SELECT array_agg(d.name ORDER BY d.name) FROM dependencies d
                        WHERE d.state = 'down'
                          AND d.name = ANY(coalesce(ps.dependencies, CAST(:registered AS text[])))) AS down
                FROM (SELECT 1) AS one
                LEFT JOIN processing_settings ps ON ps.name = :p
                """
            ),
            {"p": processing, "registered": list(registered)},
        )
    ).one()
    if row.paused:
        return "paused"
    if row.down:
        return "dependency down: " + ", ".join(row.down)
    return None


async def record_ticks(
    conn: AsyncConnection,
    schedule: str,
    epoch: int,
    ticks: Sequence[tuple[dt.datetime, str, int, str | None]],
) -> set[dt.datetime]:
    """Record (due time, outcome, tasks, detail) rows; answers the due times newly recorded (once ever)."""
    if not ticks:
        return set()
    rows = await conn.execute(
        text(
            """
            INSERT INTO schedule_ticks (schedule, due_at, outcome, tasks, detail, leader_epoch)
            SELECT :s, d, o, n, x, :epoch
            FROM unnest(CAST(:d AS timestamptz[]), CAST(:o AS text[]), CAST(:n AS int[]), CAST(:x AS text[]))
                 AS v(d, o, n, x)
            ON CONFLICT (schedule, due_at) DO NOTHING
            RETURNING due_at
            """
        ),
        {
            "s": schedule,
            "epoch": epoch,
            "d": [t[0] for t in ticks],
            "o": [t[1] for t in ticks],
            "n": [t[2] for t in ticks],
            "x": [t[3] for t in ticks],
        },
    )
    return {r.due_at for r in rows}


async def advance_schedule(conn: AsyncConnection, name: str, next_due: dt.datetime) -> None:
    await conn.execute(
        text("UPDATE schedules SET next_due_at = :d WHERE name = :n"), {"d": next_due, "n": name}
    )


async def record_poll_tasks(conn: AsyncConnection, tasks: Sequence[tuple[uuid.UUID, str, int]]) -> None:
    """Queued poll tasks (id, processing, batch size), recorded with the tick that emits them."""
    if not tasks:
        return
    await conn.execute(
        text(
            """
            INSERT INTO tasks (id, kind, processing, batch_size)
            SELECT i, 'poll', p, b
            FROM unnest(CAST(:i AS uuid[]), CAST(:p AS text[]), CAST(:b AS int[])) AS v(i, p, b)
            ON CONFLICT (id) DO NOTHING
            """
        ),
        {"i": [t[0] for t in tasks], "p": [t[1] for t in tasks], "b": [t[2] for t in tasks]},
    )


_POLL_NEED = text(
    f"""
    WITH queued AS (
        SELECT count(*) AS n FROM tasks
        WHERE state = 'queued' AND kind = 'poll' AND processing = :job
          AND created_at > now() - make_interval(secs => :fresh)
    )
    SELECT (SELECT n FROM queued) AS queued,
           (SELECT count(*) FROM (
                SELECT 1 FROM items WHERE job = :job AND ({CLAIMABLE})
                LIMIT ((SELECT n FROM queued) + :max_batches) * :batch_size
           ) AS c) + (SELECT coalesce(sum(item_count), 0) FROM (
                SELECT item_count FROM item_chunks WHERE job = :job
                LIMIT ((SELECT n FROM queued) + :max_batches) * :batch_size
           ) AS c) AS claimable
    """
)


# A poll task queued longer than this is not counted as on its way: it may be lost or stuck (no processor
# for its processing), and the backlog must not wait for it.
QUEUED_POLL_TASK_FRESH_SECONDS = 60.0


async def poll_tasks_needed(conn: AsyncConnection, processing: str, batch_size: int, max_batches: int) -> int:
    """How many poll tasks a tick should emit: one per batch of claimable items, less the poll tasks
    already queued for them (each will claim a batch), at most ``max_batches``. So the scheduler follows
    the backlog without piling up poll tasks a busy processor would run empty; and the count stops at
    what can matter, so a deep backlog costs a tick no more than a shallow one."""
    row = (
        await conn.execute(
            _POLL_NEED,
            {
                "job": processing,
                "fresh": QUEUED_POLL_TASK_FRESH_SECONDS,
                "max_batches": max_batches,
                "batch_size": batch_size,
            },
        )
    ).one()
    needed: int = math.ceil(row.claimable / batch_size) - row.queued
    return max(0, min(max_batches, needed))
