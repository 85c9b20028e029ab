"""The cost of reading the counts (``GET /v1/stats``, the gateways' admission control) as ``requests``
grows, and of migration 0011, which seeds the acceptance counters, on an embedded PostgreSQL of its own
(127.0.0.1 only).

    python -m bench.stats_read [--requests 1000000] [--unrecorded 20000] [--repeat 50]

It migrates to 0010, inserts ``--requests`` requests and their recorded counts (the last ``--unrecorded``
of them not recorded yet, then as many rows recorded again: the dead row versions a busy table holds
before vacuum), times the upgrade to 0011 (the seeding count, during which intake waits), then prints the
median time of ``counters.read_stats`` and, for comparison, of the count it replaced: the requests not
recorded yet and their items summed over the partial index ``requests_awaiting_record``, before and after
``ANALYZE``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.db import scratch_postgres
from squall.core import db, migrate
from squall.core.settings import load_settings
from squall.core.store import counters

# What read_stats counted before migration 0011.
UNRECORDED_COUNT = text(
    "SELECT count(*), coalesce(sum(item_count), 0) FROM requests WHERE payload IS NOT NULL"
)


async def median_ms(engine: AsyncEngine, replaced: bool, repeat: int) -> float:
    """Median time of read_stats, or of the count it replaced."""
    times = []
    for _ in range(repeat + 3):  # the first three left out (caches warming up)
        started = time.perf_counter()
        if replaced:
            async with engine.connect() as conn:
                await conn.execute(UNRECORDED_COUNT)
        else:
            await counters.read_stats(engine)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[3:])


async def measure(url: str, requests: int, unrecorded: int, repeat: int) -> None:
    settings = load_settings(database_url=url)
    await migrate.upgrade_async(settings, "0010")
    engine = db.create_engine(settings, pool_size=1)
    recorded = requests - unrecorded
    try:
        async with engine.begin() as conn:
            # Not analyzed behind the bench's back: "before ANALYZE" is a table autovacuum has not seen.
            await conn.execute(text("ALTER TABLE requests SET (autovacuum_enabled = off)"))
            await conn.execute(
                text(
                    """
                    INSERT INTO requests (rid, task_id, items_hash, item_count, payload, recorded_at)
                    SELECT 'r' || g, gen_random_uuid(), '\\x00', 1 + g % 100,
                           CASE WHEN g > :recorded THEN CAST('\\x00' AS bytea) END,
                           CASE WHEN g <= :recorded THEN now() END
                    FROM generate_series(1, CAST(:n AS int)) AS g
                    """
                ),
                {"n": requests, "recorded": recorded},
            )
            # Dead row versions, as recording leaves them until vacuum: as many as the backlog.
            for columns in ("payload = NULL, recorded_at = now()", "payload = '\\x00', recorded_at = NULL"):
                await conn.execute(
                    text(
                        f"UPDATE requests SET {columns} WHERE rid IN "
                        "(SELECT 'r' || g FROM generate_series(CAST(:a AS int), CAST(:b AS int)) AS g)"
                    ),
                    {"a": recorded + 1, "b": requests},
                )
            await conn.execute(
                text(
                    "INSERT INTO stat_totals (counter, processing, n) "
                    "SELECT 'requests_recorded', '', count(*) FROM requests WHERE recorded_at IS NOT NULL "
                    "UNION ALL SELECT 'items_recorded', 'sum', sum(item_count) FROM requests "
                    "WHERE recorded_at IS NOT NULL "
                    "ON CONFLICT (counter, processing) DO UPDATE SET n = excluded.n"
                )
            )
        await engine.dispose()
        started = time.perf_counter()
        await migrate.upgrade_async(settings)
        print(
            f"{requests:,} requests ({unrecorded:,} not recorded yet): migration 0011 took "
            f"{time.perf_counter() - started:.2f} s (its seeding count locks out intake)"
        )
        stats = await counters.read_stats(engine)
        assert stats.accepted == requests and stats.accepted - stats.recorded == unrecorded, stats
        for moment in ("before ANALYZE", "after ANALYZE"):
            print(
                f"{moment}: read_stats {await median_ms(engine, False, repeat):.2f} ms, the count it "
                f"replaced {await median_ms(engine, True, repeat):.2f} ms (medians of {repeat})"
            )
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE requests"))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests in the table")
    parser.add_argument("--unrecorded", type=int, default=20_000, help="of them, not recorded yet")
    parser.add_argument("--repeat", type=int, default=50, help="reads per median (default 50)")
    args = parser.parse_args()
    with scratch_postgres("stats-read") as url:
        asyncio.run(measure(url, args.requests, args.unrecorded, args.repeat))


if __name__ == "__main__":
    main()
