"""PostgreSQL's planning time of the recording statement, per batch shape, on an embedded PostgreSQL of its
own (127.0.0.1 only). Every execution is planned (``plan_cache_mode=force_custom_plan``, docs/design.md),
so planning is part of every batch's cost; the statement holds only the parts a batch needs.

    python -m bench.planning [--requests 10] [--repeat 40]

For a batch of ``--requests`` P1 requests (one item each: item rows) and of P2 requests (100 done items
each: result rows), it prints the median ``Planning Time`` of ``EXPLAIN (SUMMARY)`` with every part of the
statement and with the batch's own parts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.db import scratch_postgres
from squall.core import db, migrate, store
from squall.core.settings import load_settings


async def planning_ms(conn: AsyncConnection, statement: TextClause, params: dict[str, object]) -> float:
    plan = (await conn.execute(text("EXPLAIN (SUMMARY ON) " + statement.text), params)).all()
    line = next(row[0] for row in plan if row[0].startswith("Planning Time"))
    return float(line.split()[2])


async def measure(url: str, requests: int, repeat: int) -> None:
    settings = load_settings(database_url=url)
    await migrate.upgrade_async(settings)
    engine = db.create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            for profile, per_request in (("P1", 1), ("P2", 100)):
                ids = [uuid.uuid4() for _ in range(requests)]
                items = store.NewItems()
                for task_id in ids:
                    done = [("done", "1", None, None)] * per_request
                    items.add(task_id, list(range(per_request)), ["sum"] * per_request, done)
                params: dict[str, object] = {
                    "ids": ids,
                    "complete": [True] * requests,
                    "errors": [None] * requests,
                    "items": items.as_json(),
                }
                shape = (bool(items.request_task_id), bool(items.chunks), bool(items.done))
                every_part, own_parts = (
                    store.record_statement(True, True, True),
                    store.record_statement(*shape),
                )
                times: dict[TextClause, list[float]] = {every_part: [], own_parts: []}
                for round_ in range(repeat + 5):  # alternated, the first five left out (caches warming up)
                    for statement, measured in times.items():
                        planned = await planning_ms(conn, statement, params)
                        if round_ >= 5:
                            measured.append(planned)
                print(
                    f"{profile}: {requests} requests of {per_request} item(s): planning "
                    f"{statistics.median(times[every_part]):.3f} ms with every part, "
                    f"{statistics.median(times[own_parts]):.3f} ms with its own "
                    f"(rows, chunks, results = {shape}); medians of {repeat}"
                )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10, help="requests per batch (default 10)")
    parser.add_argument("--repeat", type=int, default=40, help="plans per median (default 40)")
    args = parser.parse_args()
    with scratch_postgres("planning") as url:
        asyncio.run(measure(url, args.requests, args.repeat))


if __name__ == "__main__":
    main()
