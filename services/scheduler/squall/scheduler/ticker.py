"""The scheduler, first form: emits polling tasks for every ``batch`` processing on a fixed interval.

Each tick is keyed by (processing, due time), so its task id and JetStream message id are functions of
the tick: two replicas, or a restart within the duplicate window, emit the same tick once. Leader election,
stored schedules, cron, misfire policies and dependency gating are the scheduler issue's work.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import AsyncExitStack

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import events, store
from squall.core.http import start_ops_server
from squall.core.lifecycle import open_resources
from squall.core.processings import Processing, Registry
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings

log = logging.getLogger("squall.scheduler")

MAX_BATCHES_PER_TICK = 8


class Ticker:
    def __init__(self, settings: Settings, registry: Registry, engine: AsyncEngine, nc: Client) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream()

    def interval(self, proc: Processing) -> float:
        return proc.interval_seconds or self.settings.scheduler.default_interval_seconds

    async def run(self, stop: asyncio.Event) -> None:
        loops = [asyncio.create_task(self._every(proc, stop)) for proc in self.registry.of_mode("batch")]
        log.info(
            "scheduling %s",
            ", ".join(f"{p.name} every {self.interval(p)} s" for p in self.registry.of_mode("batch")),
        )
        await stop.wait()
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _every(self, proc: Processing, stop: asyncio.Event) -> None:
        interval = self.interval(proc)
        while not stop.is_set():
            due = math.floor(time.time() / interval) * interval + interval
            await asyncio.sleep(max(0.0, due - time.time()))
            try:
                await self.tick(proc, due)
            except Exception as exc:
                log.warning("tick of %s failed: %s", proc.name, exc, extra={"processing": proc.name})

    async def tick(self, proc: Processing, due: float) -> int:
        """Emit up to MAX_BATCHES_PER_TICK poll tasks for the backlog of ``proc``; none if it is empty."""
        pending = await store.pending_count(self.engine, proc.name)
        batches = min(MAX_BATCHES_PER_TICK, math.ceil(pending / proc.batch_size))
        for index in range(batches):
            tick_key = f"{int(due * 1000)}-{index}"
            task = events.PollTask(
                task_id=events.poll_task_id(proc.name, tick_key),
                processing=proc.name,
                batch_size=proc.batch_size,
                tick_key=tick_key,
            )
            await store.record_poll_task(self.engine, task.task_id, proc.name, proc.batch_size)
            await self.js.publish(
                events.poll_subject(proc.name),
                task.model_dump_json().encode(),
                headers={"Nats-Msg-Id": task.msg_id},
            )
        return batches

    async def problems(self) -> list[str]:
        return await dependency_problems(self.nc, self.engine)


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall scheduler``."""
    res = await open_resources(settings, "scheduler", stack, pool_size=2)
    ticker = Ticker(settings, res.registry, res.engine, res.nc)
    ops = start_ops_server(settings.scheduler.http_port, ticker.problems, settings.scheduler.http_host)
    stack.callback(ops.stop)
    await ticker.run(stop)
