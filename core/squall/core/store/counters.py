"""The counts behind ``GET /v1/stats`` and the state gauges: totals kept by triggers (migration 0011), their
deltas folded into them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.store.driver import autocommit_connection


@dataclass(frozen=True)
class Stats:
    accepted: int  # every request the gateway accepted (recorded by a processor or not)
    recorded: int
    processed: int
    items: dict[str, dict[str, int]]  # processing → {"pending", "done", "failed"} (recorded items)
    dead_tasks: dict[str, int]  # processing → dead poll tasks
    unrecorded_items: int = 0  # items of the requests accepted but not recorded yet

    @property
    def backlog_items(self) -> int:
        """Items accepted and not processed yet: in requests not recorded, or recorded and pending."""
        return self.unrecorded_items + sum(counts["pending"] for counts in self.items.values())


_READ_STATS = text(
    """
    SELECT counter, processing, CAST(sum(n) AS bigint) AS n FROM (
        SELECT counter, processing, n FROM stat_totals
        UNION ALL SELECT counter, processing, n FROM stat_deltas
        -- A dead request task (its immediate items failed at recording) counts under its items' processing.
        UNION ALL SELECT 'tasks_dead', coalesce(t.processing, (SELECT i.job FROM items i
                                                              WHERE i.request_task_id = t.id
                                                              ORDER BY i.position LIMIT 1), ''), count(*)
                  FROM tasks t WHERE t.state = 'dead' GROUP BY 2
    ) AS c
    GROUP BY counter, processing
    """
)


async def read_stats(engine: AsyncEngine) -> Stats:
    """Request and item counts in one statement whose cost does not grow with the history or the backlog:
    folded counters, the deltas not folded yet, and dead tasks (a partial index as small as the dead-letter
    list). Requests not recorded yet are the accepted ones (counted by triggers, migration 0011) less the
    recorded ones, and so are their items."""
    async with autocommit_connection(engine) as conn:
        rows = (await conn.execute(_READ_STATS)).all()
    counts: dict[tuple[str, str], int] = {(r.counter, r.processing): int(r.n) for r in rows}
    recorded = counts.get(("requests_recorded", ""), 0)
    items: dict[str, dict[str, int]] = {}
    for (counter, processing), _ in sorted(counts.items()):
        if counter == "items_recorded":
            done = counts.get(("items_done", processing), 0)
            failed = counts.get(("items_failed", processing), 0)
            items[processing] = {
                "pending": counts[(counter, processing)] - done - failed,
                "done": done,
                "failed": failed,
            }
    items_recorded = sum(n for (counter, _), n in counts.items() if counter == "items_recorded")
    return Stats(
        accepted=counts.get(("requests_accepted", ""), 0),
        recorded=recorded,
        processed=counts.get(("requests_processed", ""), 0),
        items=items,
        dead_tasks={p: n for (c, p), n in sorted(counts.items()) if c == "tasks_dead"},
        unrecorded_items=counts.get(("items_accepted", ""), 0) - items_recorded,
    )


# Any constant distinct from the migration lock's: only one process folds at a time.
_FOLD_LOCK = 0x5351_5354_4154


async def fold_stat_deltas(engine: AsyncEngine) -> int | None:
    """Move the appended count changes into the totals (keeps read_stats cheap); answers how many delta
    rows were folded, or None when another process is folding right now."""
    async with engine.begin() as conn:
        if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK})).scalar():
            return None
        moved = await conn.execute(
            text(
                """
                WITH moved AS (
                    DELETE FROM stat_deltas RETURNING counter, processing, n
                ), folded AS (
                    INSERT INTO stat_totals (counter, processing, n)
                    SELECT counter, processing, sum(n) FROM moved GROUP BY counter, processing
                    ON CONFLICT (counter, processing) DO UPDATE SET n = stat_totals.n + excluded.n
                )
                SELECT count(*) FROM moved
                """
            )
        )
        return int(moved.scalar_one())
