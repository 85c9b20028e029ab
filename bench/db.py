"""What PostgreSQL says about a run: wait until every accepted request is processed, then measure."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.cli.embedded import PostgresServer
from squall.core import migrate
from squall.core.db import create_engine
from squall.core.settings import load_settings

CONNECT_TIMEOUT_SECONDS = 10.0
QUERY_TIMEOUT_SECONDS = 60.0

_PROGRESS = "SELECT count(*) AS requests, count(*) FILTER (WHERE processed) AS processed FROM requests"

# Items in a final state, n at a time: item rows, and result rows (a request's done items of one
# processing, counted without unnesting them).
_FINISHED = """
finished AS (
    SELECT state, updated_at, 1 AS n FROM items WHERE state IN ('done', 'failed')
    UNION ALL
    SELECT 'done', updated_at, item_count FROM item_results
)"""

# Throughput end to end: items in a final state over the time from the first acceptance to the last item
# write. In immediate mode items are written with their result (updated_at = the recording transaction's
# now()); in batch mode updated_at is the poll task's write of the result.
_THROUGHPUT = f"""
WITH {_FINISHED}, r AS (
    SELECT count(*) AS requests, coalesce(sum(item_count), 0) AS items_declared,
           min(created_at) AS first_created, max(created_at) AS last_created
    FROM requests
), i AS (
    SELECT coalesce(sum(n), 0) AS items,
           coalesce(sum(n) FILTER (WHERE state = 'done'), 0) AS done,
           coalesce(sum(n) FILTER (WHERE state = 'failed'), 0) AS failed,
           max(updated_at) AS last_updated
    FROM finished
)
SELECT r.requests, r.items_declared, i.items, i.done, i.failed,
       extract(epoch FROM i.last_updated - r.first_created)::float8 AS span_seconds,
       (i.items / nullif(extract(epoch FROM i.last_updated - r.first_created), 0))::float8
           AS items_per_second,
       extract(epoch FROM i.last_updated - r.last_created)::float8 AS drain_seconds
FROM r, i
"""

# Throughput over time, in whole seconds since the first acceptance: requests accepted (created_at),
# requests processed (processed_at) and items persisted in a final state (updated_at) per second.
_TIMELINE = f"""
WITH {_FINISHED}, origin AS (SELECT min(created_at) AS t0 FROM requests),
accepted AS (
    SELECT floor(extract(epoch FROM created_at - t0))::int AS second, count(*) AS n
    FROM requests, origin GROUP BY 1
), processed AS (
    SELECT floor(extract(epoch FROM processed_at - t0))::int AS second, count(*) AS n
    FROM requests, origin WHERE processed GROUP BY 1
), persisted AS (
    SELECT floor(extract(epoch FROM updated_at - t0))::int AS second, sum(n) AS n
    FROM finished, origin GROUP BY 1
)
SELECT s.second, coalesce(a.n, 0) AS accepted, coalesce(p.n, 0) AS processed, coalesce(i.n, 0) AS items
FROM (SELECT second FROM accepted UNION SELECT second FROM processed UNION SELECT second FROM persisted) s
LEFT JOIN accepted a USING (second) LEFT JOIN processed p USING (second) LEFT JOIN persisted i USING (second)
ORDER BY s.second
"""

# Latency end to end per request: from the gateway's acceptance to the processor marking it processed.
_LATENCY = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at))::float8
           AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at))::float8
           AS p90,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at))::float8
           AS p99,
       max(extract(epoch FROM processed_at - created_at))::float8 AS max,
       avg(extract(epoch FROM processed_at - created_at))::float8 AS avg
FROM requests WHERE processed
"""


@contextlib.contextmanager
def scratch_postgres(name: str) -> Iterator[str]:
    """An embedded PostgreSQL of its own in a temporary folder (127.0.0.1 only), for a narrow benchmark;
    yields its SQLAlchemy URL and removes it all afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"squall-{name}-") as folder:
        server = PostgresServer(Path(folder) / "pg")
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def parse_int_options(doc: str | None, **options: tuple[int, str]) -> argparse.Namespace:
    """The command line of a narrow benchmark: its docstring as description, and ``--name`` integer
    options given as ``name=(default, help)``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, help_text) in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=help_text)
    return parser.parse_args()


def run_on_scratch_postgres(
    name: str,
    measure: Callable[[AsyncEngine], Awaitable[None]],
    *,
    pool_size: int | None = None,
    hot_statements: bool = False,
) -> None:
    """Run ``measure`` on a pool (``db.create_engine``'s options) of a scratch PostgreSQL
    (``scratch_postgres``) migrated to the newest revision; the pool is disposed of afterwards."""

    async def on_migrated_engine(url: str) -> None:
        settings = load_settings(database_url=url)
        await migrate.upgrade_async(settings)
        engine = create_engine(settings, pool_size=pool_size, hot_statements=hot_statements)
        try:
            await measure(engine)
        finally:
            await engine.dispose()

    with scratch_postgres(name) as url:
        asyncio.run(on_migrated_engine(url))


def dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/squall"


async def _connect(port: int) -> asyncpg.Connection:
    return await asyncpg.connect(dsn(port), timeout=CONNECT_TIMEOUT_SECONDS)


async def wait_processed(port: int, at_least: int, within: float, poll: float = 0.5) -> dict[str, Any]:
    """Poll until every request in the table is processed (and there are at least ``at_least``)."""
    started = time.monotonic()
    conn = await _connect(port)
    try:
        while True:
            row = await conn.fetchrow(_PROGRESS, timeout=QUERY_TIMEOUT_SECONDS)
            assert row is not None
            requests, processed = int(row["requests"]), int(row["processed"])
            done = requests == processed and requests >= at_least
            elapsed = time.monotonic() - started
            if done or elapsed >= within:
                return {
                    "drained": done,
                    "requests": requests,
                    "processed": processed,
                    "wait_seconds": round(elapsed, 3),
                }
            await asyncio.sleep(poll)
    finally:
        await conn.close(timeout=5)


def _seconds_to_ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


async def measure(port: int) -> dict[str, Any]:
    conn = await _connect(port)
    try:
        t = await conn.fetchrow(_THROUGHPUT, timeout=QUERY_TIMEOUT_SECONDS)
        lat = await conn.fetchrow(_LATENCY, timeout=QUERY_TIMEOUT_SECONDS)
    finally:
        await conn.close(timeout=5)
    assert t is not None and lat is not None
    return {
        "requests": int(t["requests"]),
        "items_declared": int(t["items_declared"]),
        "items_final": int(t["items"]),
        "items_done": int(t["done"]),
        "items_failed": int(t["failed"]),
        "span_seconds": None if t["span_seconds"] is None else round(t["span_seconds"], 3),
        "items_per_second": None if t["items_per_second"] is None else round(t["items_per_second"], 1),
        # From the last acceptance to the last item persisted: how long the backlog took to drain.
        "drain_seconds": None if t["drain_seconds"] is None else round(t["drain_seconds"], 3),
        "e2e_requests": int(lat["n"]),
        "e2e_p50_ms": _seconds_to_ms(lat["p50"]),
        "e2e_p90_ms": _seconds_to_ms(lat["p90"]),
        "e2e_p99_ms": _seconds_to_ms(lat["p99"]),
        "e2e_max_ms": _seconds_to_ms(lat["max"]),
        "e2e_avg_ms": _seconds_to_ms(lat["avg"]),
    }


async def timeline(port: int) -> dict[str, list[int]]:
    """Per-second counts since the first acceptance (seconds without any event are left out)."""
    conn = await _connect(port)
    try:
        rows = await conn.fetch(_TIMELINE, timeout=QUERY_TIMEOUT_SECONDS)
    finally:
        await conn.close(timeout=5)
    return {
        "second": [int(r["second"]) for r in rows],
        "requests_accepted": [int(r["accepted"]) for r in rows],
        "requests_processed": [int(r["processed"]) for r in rows],
        "items_persisted": [int(r["items"]) for r in rows],
    }
