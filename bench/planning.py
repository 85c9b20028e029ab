"""PostgreSQL's planning time of the recording statement, per batch shape, on an embedded PostgreSQL of its
own (127.0.0.1 only). Every execution is planned (``plan_cache_mode=force_custom_plan``, docs/design.md),
so planning is part of every batch's cost; the statement holds only the parts a batch needs.

    python -m bench.planning [--requests 10] [--repeat 40]

For a batch of ``--requests`` P1 requests (one item each: item rows) and of P2 requests (100 done items
each: result rows), it prints the median ``Planning Time`` of ``EXPLAIN (SUMMARY)`` with every part of the
statement and with the batch's own parts.
"""

from __future__ import annotations

import statistics
import uuid

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench.db import parse_int_options, run_on_scratch_postgres
from squall.core.store import recording


async def planning_ms(conn: AsyncConnection, statement: TextClause, params: dict[str, object]) -> float:
    plan = (await conn.execute(text("EXPLAIN (SUMMARY ON) " + statement.text), params)).all()
    line = next(row[0] for row in plan if row[0].startswith("Planning Time"))
    return float(line.split()[2])


async def measure(engine: AsyncEngine, requests: int, repeat: int) -> None:
    async with engine.connect() as conn:
        for profile, per_request in (("P1", 1), ("P2", 100)):
            ids = [uuid.uuid4() for _ in range(requests)]
            items = recording.NewItems()
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
                recording.record_statement(True, True, True),
                recording.record_statement(*shape),
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


def main() -> None:
    args = parse_int_options(
        __doc__,
        requests=(10, "requests per batch (default 10)"),
        repeat=(40, "plans per median (default 40)"),
    )
    run_on_scratch_postgres(
        "planning", lambda engine: measure(engine, args.requests, args.repeat), pool_size=1
    )


if __name__ == "__main__":
    main()
