"""What a scheduler tick costs PostgreSQL under a deep backlog of one-item requests, on an embedded
PostgreSQL of its own (127.0.0.1 only).

    python -m bench.poll_need [--items 400000] [--repeat 20]

It migrates, inserts ``--items`` pending items of ``sum`` (one per request, as P1 leaves them), vacuums
and analyzes, then prints the median time of ``scheduling.poll_tasks_needed`` (the count behind every tick:
claimable items, up to 64 batches of them) for batches of 1,000 and of 5,000 items.
"""

from __future__ import annotations

import statistics
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.db import parse_int_options, run_on_scratch_postgres
from squall.core.store import scheduling

MAX_BATCHES = 64  # the built-in schedules' max_batches_per_tick


async def measure(engine: AsyncEngine, items: int, repeat: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO items (request_task_id, position, number, job) "
                "SELECT gen_random_uuid(), 0, g, 'sum' FROM generate_series(1, CAST(:n AS int)) AS g"
            ),
            {"n": items},
        )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as conn:
        await conn.execute(text("VACUUM ANALYZE items"))
    for batch_size in (1000, 5000):
        times = []
        for _ in range(repeat + 3):  # the first three left out (caches warming up)
            async with engine.connect() as conn:
                started = time.perf_counter()
                needed = await scheduling.poll_tasks_needed(conn, "sum", batch_size, MAX_BATCHES)
                times.append((time.perf_counter() - started) * 1000)
        print(
            f"{items:,} pending one-item requests, batches of {batch_size:,}: {needed} poll tasks "
            f"needed, the count took {statistics.median(times[3:]):.1f} ms (median of {repeat})"
        )


def main() -> None:
    args = parse_int_options(
        __doc__, items=(400_000, "pending items, one per request"), repeat=(20, "ticks timed per batch size")
    )
    run_on_scratch_postgres("poll-need", lambda engine: measure(engine, args.items, args.repeat), pool_size=1)


if __name__ == "__main__":
    main()
