"""The scheduler: any number of replicas, one leader, each tick emitted once.

This module wires one replica together: its hold on the leadership lease (:mod:`.leadership`), what it
writes on becoming leader (:mod:`.seeding`), and the leader's duties (:mod:`.duties`, one module each),
all run the same way by :class:`.duty.DutyRunner`. A new duty is one module under ``duties/`` and one
line in the list below.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.http import start_ops_server
from squall.core.lifecycle import open_resources
from squall.core.processings import Registry
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings
from squall.scheduler.duties.dependency_checks import DependencyChecks
from squall.scheduler.duties.pending_gauge import PendingGauge
from squall.scheduler.duties.pruning import Pruning
from squall.scheduler.duties.retention import Retention
from squall.scheduler.duties.ticks import Ticks
from squall.scheduler.duty import DutyRunner
from squall.scheduler.leadership import Leadership
from squall.scheduler.seeding import seed_schedules_and_dependencies


class Scheduler:
    """One replica: it competes for the lease and, while it leads, runs the leader's duties."""

    def __init__(
        self, settings: Settings, registry: Registry, engine: AsyncEngine, nc: Client, name: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream()
        self.name = name
        self.leadership = Leadership(
            engine, name, settings.scheduler.lease_seconds, on_gaining=self._prepare_to_lead
        )
        self.ticks = Ticks(registry, engine, self.js, self.leadership)
        self.duties = DutyRunner(
            self.leadership,
            [
                self.ticks,
                DependencyChecks(engine),
                PendingGauge(engine, registry),
                Pruning(engine),
                Retention(engine, settings.retention),
            ],
        )

    @property
    def epoch(self) -> int | None:
        """Set while this replica leads."""
        return self.leadership.epoch

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    async def run(self, stop: asyncio.Event) -> None:
        self.duties.start()
        try:
            await self.leadership.hold(stop)
        finally:
            await self.duties.stop()
            await self.leadership.release()

    async def fire_due(self) -> float:
        """Fire every schedule that is due; answers how long to sleep until the next one is."""
        return await self.ticks.fire_due()

    async def fire(self, name: str) -> int:
        """Run one schedule's due ticks in one transaction; answers the poll tasks emitted."""
        return await self.ticks.fire(name)

    async def problems(self) -> list[str]:
        return await dependency_problems(self.nc, self.engine)

    async def _prepare_to_lead(self) -> None:
        await seed_schedules_and_dependencies(self.engine, self.registry, self.settings)


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall scheduler``."""
    res = await open_resources(settings, "scheduler", stack, stop, pool_size=3)
    scheduler = Scheduler(settings, res.registry, res.engine, res.nc, res.name)
    ops = start_ops_server(settings.scheduler.http_port, scheduler.problems, settings.scheduler.http_host)
    stack.callback(ops.stop)
    await scheduler.run(stop)
