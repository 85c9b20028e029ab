"""What a scheduler tick costs PostgreSQL under a deep backlog of one-item requests, on an embedded
PostgreSQL of its own (127.0.0.1 only).

    python -m bench.poll_need [--items 400000] [--repeat 20]

It migrates, inserts ``--items`` pending items of ``sum`` (one per request, as P1 leaves them), vacuums
and analyzes, then prints the median time of ``store.poll_tasks_needed`` (the count behind every tick:
claimable items, up to 64 batches of them) for batches of 1,000 and of 5,000 items.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sqlalchemy import text

from bench.db import scratch_postgres
from squall.core import db, migrate, store
from squall.core.settings import load_settings

MAX_BATCHES = 64  # the built-in schedules' max_batches_per_tick


async def measure(url: str, items: int, repeat: int) -> None:
    settings = load_settings(database_url=url)
    await migrate.upgrade_async(settings)
    engine = db.create_engine(settings, pool_size=1)
    try:
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
                    needed = await store.poll_tasks_needed(conn, "sum", batch_size, MAX_BATCHES)
                    times.append((time.perf_counter() - started) * 1000)
            print(
                f"{items:,} pending one-item requests, batches of {batch_size:,}: {needed} poll tasks "
                f"needed, the count took {statistics.median(times[3:]):.1f} ms (median of {repeat})"
            )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=400_000, help="pending items, one per request")
    parser.add_argument("--repeat", type=int, default=20, help="ticks timed per batch size")
    args = parser.parse_args()
    with scratch_postgres("poll-need") as url:
        asyncio.run(measure(url, args.items, args.repeat))


if __name__ == "__main__":
    main()
