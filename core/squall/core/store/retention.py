"""Retention (the scheduler's leader, ``squall prune``): finished work older than its period is deleted, in
bounded batches, oldest first.

A request is finished once processed (every item done or failed). One with a failed item, or whose task is
dead, is a dead letter, kept for the longer dead period so that an operator can still replay it; the others
for the finished period. With a request go its items, chunks, result rows and request task. A poll task is
finished once succeeded or failed, dead letters once dead. Unfinished work is never deleted, whatever its
age. The lifetime counters behind ``GET /v1/stats`` are not touched: they count what happened (migration
0011's trigger takes back only acceptances never recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# The tables retention deletes from, in the order a report lists them.
TABLES = ("requests", "items", "item_results", "item_chunks", "tasks")


@dataclass(frozen=True)
class Periods:
    """Seconds after which finished work and dead letters expire; None: kept forever."""

    finished: float | None
    dead: float | None

    @classmethod
    def of(cls, finished_seconds: float, dead_seconds: float) -> Periods:
        return cls(finished_seconds or None, dead_seconds or None)

    @property
    def keeps_everything(self) -> bool:
        return self.finished is None and self.dead is None


@dataclass
class Deleted:
    """Rows deleted, by table."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def add(self, table: str, count: int) -> None:
        self.rows[table] += count

    @property
    def total(self) -> int:
        return sum(self.rows.values())


# Expired requests are taken oldest first through the partial index on processed_at, locked so that two
# passes (a leader and `squall prune`) never take the same; each statement deletes one batch and all that
# belongs to it. A NULL period never expires anything (`x < NULL` is not true).
_CUTOFFS = """
    cutoffs AS (
        SELECT now() - make_interval(secs => CAST(:finished AS float8)) AS finished,
               now() - make_interval(secs => CAST(:dead AS float8)) AS dead
    )"""

_EXPIRED_REQUESTS = text(
    f"""
    WITH {_CUTOFFS},
    expired AS (
        SELECT r.rid, r.task_id
        FROM requests AS r, cutoffs AS c
        WHERE r.processed
          AND r.processed_at < greatest(c.finished, c.dead)
          AND r.processed_at < CASE
                WHEN EXISTS (
                    SELECT 1 FROM items AS i WHERE i.request_task_id = r.task_id AND i.state = 'failed'
                ) OR EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = r.task_id AND t.state = 'dead')
                THEN c.dead ELSE c.finished END
        ORDER BY r.processed_at
        LIMIT :limit
        FOR UPDATE OF r SKIP LOCKED
    ),
    gone_items AS (
        DELETE FROM items AS i USING expired AS e WHERE i.request_task_id = e.task_id RETURNING 1
    ),
    gone_results AS (
        DELETE FROM item_results AS x USING expired AS e WHERE x.request_task_id = e.task_id RETURNING 1
    ),
    gone_chunks AS (
        DELETE FROM item_chunks AS k USING expired AS e WHERE k.request_task_id = e.task_id RETURNING 1
    ),
    gone_tasks AS (
        DELETE FROM tasks AS t USING expired AS e WHERE t.id = e.task_id RETURNING 1
    ),
    gone_requests AS (
        DELETE FROM requests AS r USING expired AS e WHERE r.rid = e.rid RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone_requests) AS requests,
           (SELECT count(*) FROM gone_items) AS items,
           (SELECT count(*) FROM gone_results) AS item_results,
           (SELECT count(*) FROM gone_chunks) AS item_chunks,
           (SELECT count(*) FROM gone_tasks) AS tasks
    """
)

_EXPIRED_POLL_TASKS = text(
    f"""
    WITH {_CUTOFFS},
    expired AS (
        SELECT t.id FROM tasks AS t, cutoffs AS c
        WHERE t.kind = 'poll' AND t.finished_at IS NOT NULL
          AND t.finished_at < greatest(c.finished, c.dead)
          AND t.finished_at < CASE t.state WHEN 'dead' THEN c.dead ELSE c.finished END
        ORDER BY t.finished_at
        LIMIT :limit
        FOR UPDATE OF t SKIP LOCKED
    )
    DELETE FROM tasks AS t USING expired AS e WHERE t.id = e.id RETURNING 1
    """
)

# How old the oldest finished row kept is, by table, dead letters left out (they are kept longer on purpose):
# what shows retention falling behind. Read from the partial indexes, oldest first.
_OLDEST = text(
    """
    SELECT extract(epoch FROM now() - (
               SELECT r.processed_at FROM requests AS r
               WHERE r.processed
                 AND NOT EXISTS (
                     SELECT 1 FROM items AS i WHERE i.request_task_id = r.task_id AND i.state = 'failed'
                 )
                 AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = r.task_id AND t.state = 'dead')
               ORDER BY r.processed_at LIMIT 1)) AS requests,
           extract(epoch FROM now() - (
               SELECT finished_at FROM tasks
               WHERE kind = 'poll' AND finished_at IS NOT NULL AND state <> 'dead'
               ORDER BY finished_at LIMIT 1)) AS tasks
    """
)

_TABLE_BYTES = text("SELECT t, pg_total_relation_size(t::regclass) FROM unnest(CAST(:tables AS text[])) AS t")
# The planner's estimate, kept by autovacuum and ANALYZE: free to read, where counting would scan the table.
_TABLE_ROWS = text(
    "SELECT t, greatest(c.reltuples, 0) FROM unnest(CAST(:tables AS text[])) AS t"
    " JOIN pg_class AS c ON c.oid = t::regclass"
)


def _params(periods: Periods, limit: int) -> dict[str, float | int | None]:
    return {"finished": periods.finished, "dead": periods.dead, "limit": limit}


async def delete_expired_requests(conn: AsyncConnection, periods: Periods, limit: int) -> Deleted:
    """One batch of at most ``limit`` expired requests, and everything that belongs to them."""
    row = (await conn.execute(_EXPIRED_REQUESTS, _params(periods, limit))).one()
    deleted = Deleted()
    for table in TABLES:
        deleted.add(table, int(getattr(row, table)))
    return deleted


async def delete_expired_poll_tasks(conn: AsyncConnection, periods: Periods, limit: int) -> int:
    """One batch of at most ``limit`` expired poll tasks."""
    return len((await conn.execute(_EXPIRED_POLL_TASKS, _params(periods, limit))).all())


async def oldest_finished_seconds(conn: AsyncConnection) -> dict[str, float | None]:
    """Age of the oldest finished request and poll task still kept, dead letters left out (None: none)."""
    row = (await conn.execute(_OLDEST)).one()
    ages = {"requests": row.requests, "tasks": row.tasks}
    return {table: None if age is None else float(age) for table, age in ages.items()}


async def table_bytes(conn: AsyncConnection) -> dict[str, int]:
    """Bytes on disk of each table retention deletes from, its indexes and TOAST included."""
    rows = (await conn.execute(_TABLE_BYTES, {"tables": list(TABLES)})).all()
    return {table: int(size) for table, size in rows}


async def table_rows_estimate(conn: AsyncConnection) -> dict[str, int]:
    """Rows of each table retention deletes from, as PostgreSQL estimates them (0 before an ANALYZE)."""
    rows = (await conn.execute(_TABLE_ROWS, {"tables": list(TABLES)})).all()
    return {table: int(estimate) for table, estimate in rows}


async def run_pass(
    engine: AsyncEngine, periods: Periods, batch_size: int, dry_run: bool = False, pause_seconds: float = 0.0
) -> Deleted:
    """Delete every expired request and poll task, a batch per transaction, until a batch comes back short,
    pausing ``pause_seconds`` after each full batch so that a large backlog does not take the database from
    intake. ``dry_run``: the same statements in one transaction rolled back, without pauses, so the counts
    are exactly what a pass would delete now."""
    deleted = Deleted()
    if periods.keeps_everything:
        return deleted
    if not dry_run:
        await _delete_batches(engine.begin, periods, batch_size, deleted, pause_seconds)
        return deleted
    async with engine.connect() as conn, conn.begin() as transaction:

        @contextlib.asynccontextmanager
        async def in_this_transaction() -> AsyncIterator[AsyncConnection]:
            yield conn

        await _delete_batches(in_this_transaction, periods, batch_size, deleted, pause_seconds=0.0)
        await transaction.rollback()
    return deleted


async def _delete_batches(
    batch: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
    periods: Periods,
    batch_size: int,
    deleted: Deleted,
    pause_seconds: float,
) -> None:
    """Expired requests, then expired poll tasks, a batch per ``batch()``, until a batch comes back short."""
    while True:
        async with batch() as conn:
            requests = await delete_expired_requests(conn, periods, batch_size)
        for table, count in requests.rows.items():
            deleted.add(table, count)
        if requests.rows["requests"] < batch_size:
            break
        await asyncio.sleep(pause_seconds)
    while True:
        async with batch() as conn:
            count = await delete_expired_poll_tasks(conn, periods, batch_size)
        deleted.add("tasks", count)
        if count < batch_size:
            return
        await asyncio.sleep(pause_seconds)
