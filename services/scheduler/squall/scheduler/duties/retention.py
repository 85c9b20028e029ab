"""Duty: delete finished work older than its retention period, and export what is kept and its size."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import metrics
from squall.core.settings import RetentionSettings
from squall.core.store import retention

log = logging.getLogger("squall.scheduler")


class Retention:
    name = "retention"

    def __init__(self, engine: AsyncEngine, settings: RetentionSettings) -> None:
        self.engine = engine
        self.every_seconds = settings.interval_seconds
        self.periods = retention.Periods.of(settings.finished_seconds, settings.dead_seconds)
        self.batch_size = settings.batch_size
        self.pause_seconds = settings.pause_seconds
        metrics.RETENTION_PERIOD.labels("finished").set(settings.finished_seconds)
        metrics.RETENTION_PERIOD.labels("dead").set(settings.dead_seconds)

    async def run_once(self) -> None:
        deleted = await retention.run_pass(
            self.engine, self.periods, self.batch_size, pause_seconds=self.pause_seconds
        )
        for table, count in deleted.rows.items():
            if count:
                metrics.RETENTION_DELETED.labels(table).inc(count)
        if deleted.total:
            log.info("retention deleted %s", ", ".join(f"{n} {t}" for t, n in deleted.rows.items() if n))
        async with self.engine.connect() as conn:
            oldest = await retention.oldest_finished_seconds(conn)
            sizes = await retention.table_bytes(conn)
            rows = await retention.table_rows_estimate(conn)
        for table, age in oldest.items():
            metrics.RETENTION_OLDEST.labels(table).set(age or 0.0)
        for table, size in sizes.items():
            metrics.DB_TABLE_BYTES.labels(table).set(size)
        for table, estimate in rows.items():
            metrics.DB_TABLE_ROWS.labels(table).set(estimate)
