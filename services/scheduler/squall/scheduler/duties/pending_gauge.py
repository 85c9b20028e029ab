"""Duty: export ``squall_processing_pending_items`` from the database, once a second, from one replica."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import metrics
from squall.core.processings import Registry
from squall.core.store import operations

EXPORT_EVERY_SECONDS = 1.0


class PendingGauge:
    name = "reading the backlog"
    every_seconds = EXPORT_EVERY_SECONDS

    def __init__(self, engine: AsyncEngine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry

    async def run_once(self) -> None:
        counts = await operations.pending_counts(self.engine)
        for name in self.registry:
            metrics.PROCESSING_PENDING.labels(name).set(counts.get(name, 0))
