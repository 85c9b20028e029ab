"""``GET /v1/stats``, the state gauges (squall_requests, squall_items, squall_dead_tasks,
squall_backlog_items) and the backlog the admission control reads.

All come from one count query (``counters.read_stats``), cached for a second with at most one query in
flight per gateway: a load tool polling every second, Prometheus scraping, ``squall top`` and the
submissions' admission together cost PostgreSQL one cheap statement a second per gateway, however many
callers there are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import metrics
from squall.core.http import MetricsHandler
from squall.core.logs import error_text
from squall.core.store import counters, retention
from squall.gateway.base import BaseHandler

log = logging.getLogger("squall.gateway")

CACHE_SECONDS = 1.0


class StatsCache:
    """The latest counts, refreshed at most once per ``max_age`` seconds; callers share one query."""

    def __init__(self, engine: AsyncEngine, max_age: float = CACHE_SECONDS) -> None:
        self.engine = engine
        self.max_age = max_age
        self._stats: counters.Stats | None = None
        self._read_at = 0.0
        self._refresh: asyncio.Future[counters.Stats] | None = None

    async def backlog_items(self) -> int:
        return (await self.get()).backlog_items

    async def get(self) -> counters.Stats:
        if self._stats is not None and time.monotonic() - self._read_at < self.max_age:
            return self._stats
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._read())
        refresh = self._refresh
        # shield: a caller that goes away (client disconnected) must not cancel the others' query.
        return await asyncio.shield(refresh)

    async def _read(self) -> counters.Stats:
        try:
            stats = await counters.read_stats(self.engine)
        finally:
            self._refresh = None
        self._stats, self._read_at = stats, time.monotonic()
        export(stats)
        return stats


def export(stats: counters.Stats) -> None:
    metrics.BACKLOG_ITEMS.set(stats.backlog_items)
    metrics.REQUESTS.labels("pending").set(stats.accepted - stats.processed)
    metrics.REQUESTS.labels("processed").set(stats.processed)
    for processing, counts in stats.items.items():
        for state, n in counts.items():
            metrics.ITEMS.labels(processing, state).set(n)
    for processing in {*stats.items, *stats.dead_tasks}:
        metrics.DEAD_TASKS.labels(processing).set(stats.dead_tasks.get(processing, 0))


def as_json(stats: counters.Stats) -> dict[str, Any]:
    return {
        "requests": {
            "accepted": stats.accepted,
            "processed": stats.processed,
            "pending": stats.accepted - stats.processed,
            "recorded": stats.recorded,
        },
        "items": stats.items,
        "dead_tasks": stats.dead_tasks,
        "backlog": {"items": stats.backlog_items},
    }


class StatsHandler(BaseHandler):
    """``GET /v1/stats``: request and item totals, at most a second old."""

    route = "/v1/stats"
    scope = "read"

    def initialize(self, cache: StatsCache) -> None:
        self.cache = cache

    async def get(self) -> None:
        self.write_json(as_json(await self.cache.get()))


class RetentionHandler(BaseHandler):
    """``GET /v1/retention``: the retention periods in force, the age of the oldest finished work kept, and
    the size on disk of each table of work."""

    route = "/v1/retention"
    scope = "read"

    async def get(self) -> None:
        kept = self.app.squall.retention
        async with self.app.engine.connect() as conn:
            oldest = await retention.oldest_finished_seconds(conn)
            sizes = await retention.table_bytes(conn)
        self.write_json(
            {
                "finished_seconds": kept.finished_seconds,
                "dead_seconds": kept.dead_seconds,
                "interval_seconds": kept.interval_seconds,
                "oldest_finished_seconds": oldest,
                "table_bytes": sizes,
            }
        )


class GatewayMetricsHandler(MetricsHandler):
    """The gateway's ``/metrics``: refreshes the state gauges (through the cache) before answering. Should
    PostgreSQL be unreachable the other metrics are still served, the state gauges with their last values."""

    def initialize(self, cache: StatsCache) -> None:
        self.cache = cache

    async def get(self) -> None:  # type: ignore[override]
        try:
            await self.cache.get()
        except Exception as exc:
            log.warning("state gauges not refreshed: %s", error_text(exc))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


def routes(cache: StatsCache) -> list[tuple[str, type[Any], dict[str, Any]]]:
    """Listed before the shared operations routes, so this ``/metrics`` is the one that answers."""
    return [
        (r"/v1/stats", StatsHandler, {"cache": cache}),
        (r"/v1/retention", RetentionHandler, {}),
        (r"/metrics", GatewayMetricsHandler, {"cache": cache}),
    ]
