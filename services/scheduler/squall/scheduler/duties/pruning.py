"""Duty: once an hour, delete tick records older than a week and forget replicas unseen for an hour."""

from __future__ import annotations

import contextlib
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.store import scheduling

PRUNE_EVERY_SECONDS = 3600.0
KEEP_TICKS_DAYS = 7
FORGET_INSTANCES_SECONDS = 3600


class Pruning:
    name = "pruning"
    every_seconds = PRUNE_EVERY_SECONDS

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Monotonic time of the last prune, kept across changes of leader so that regaining leadership
        # within the hour does not prune again. From 0.0, the first prune is at once on a host up an hour.
        self.last_pruned = 0.0

    async def run_once(self) -> float | None:
        wait = PRUNE_EVERY_SECONDS - (time.monotonic() - self.last_pruned)
        if wait >= 0:
            return wait
        self.last_pruned = time.monotonic()
        # Housekeeping only: a failed prune is left to the next one, an hour on, without a warning.
        with contextlib.suppress(Exception):
            await scheduling.prune(
                self.engine,
                keep_ticks_days=KEEP_TICKS_DAYS,
                forget_instances_seconds=FORGET_INSTANCES_SECONDS,
            )
        return None
