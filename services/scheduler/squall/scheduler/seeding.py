"""What a replica writes on becoming leader, before any of its duties runs: a default schedule for every
processing, and the dependencies the settings declare."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.processings import Registry
from squall.core.settings import Settings
from squall.core.store import dependencies, scheduling


async def seed_schedules_and_dependencies(
    engine: AsyncEngine, registry: Registry, settings: Settings
) -> None:
    for proc in registry.values():  # immediate ones too: their schedule picks up retries
        interval = proc.interval_seconds or settings.scheduler.default_interval_seconds
        await scheduling.ensure_default_schedule(engine, proc.name, interval, proc.batch_size)
    for name, config in settings.dependencies.items():
        await dependencies.put_dependency(engine, name, config.model_dump(), origin="config")
