"""The scheduler: any number of replicas, one leader, each tick emitted once.

Leadership is a lease row in PostgreSQL (``scheduler_leader``) renewed every second with a 3-second time to
live, and an epoch that grows whenever it changes hands. A leader killed without warning is replaced when
its lease lapses (within ``lease_seconds`` + one renewal period). Every tick is fired in one transaction
that locks its schedule row, checks that this replica still holds the lease *with the same epoch*, records
the tick in ``schedule_ticks`` (primary key: schedule and due time, so a tick is recorded once, ever),
publishes its poll tasks (message ids derived from the tick, so JetStream drops a second emission) and
moves the schedule's next due time. A crash before the commit leaves the tick due: the next leader fires
it again with the same task and message ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from contextlib import AsyncExitStack

from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import checks, events, metrics, schedules, store
from squall.core.http import start_ops_server
from squall.core.lifecycle import open_resources
from squall.core.logs import error_text
from squall.core.processings import Registry
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings

log = logging.getLogger("squall.scheduler")

RENEW_SECONDS = 1.0
IDLE_WAKE_SECONDS = 0.5  # the longest the leader sleeps between looks at the schedules
PRUNE_EVERY_SECONDS = 3600.0
CHECK_WAKE_SECONDS = 0.25  # how often the leader looks for dependencies due a check


class Scheduler:
    def __init__(
        self, settings: Settings, registry: Registry, engine: AsyncEngine, nc: Client, name: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.nc = nc
        self.js = nc.jetstream()
        self.name = name
        self.host = socket.gethostname()
        self.started_at = dt.datetime.now(dt.UTC)
        self.epoch: int | None = None  # set while this replica leads
        self.wake = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    # --- leadership ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        ticker = asyncio.create_task(self._tick_forever(stop))
        checker = asyncio.create_task(self._check_forever(stop))
        last_prune = 0.0
        try:
            while not stop.is_set():
                await self._renew()
                if self.leading:
                    await self._export_backlog()
                if self.leading and time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                    last_prune = time.monotonic()
                    with contextlib.suppress(Exception):
                        await store.prune(self.engine, keep_ticks_days=7, forget_instances_seconds=3600)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RENEW_SECONDS)
        finally:
            ticker.cancel()
            checker.cancel()
            await asyncio.gather(ticker, checker, return_exceptions=True)
            if self.leading:
                # Hand over at once rather than make the others wait for the lease to lapse.
                with contextlib.suppress(Exception):
                    await store.resign_leadership(self.engine, self.name)
            with contextlib.suppress(Exception):
                await store.leave_instances(self.engine, self.name)
            metrics.SCHEDULER_IS_LEADER.set(0)

    async def _renew(self) -> None:
        try:
            await store.heartbeat_instance(self.engine, self.name, self.host, self.started_at)
            epoch = await store.renew_leadership(
                self.engine, self.name, self.settings.scheduler.lease_seconds
            )
        except Exception as exc:
            # Without the database this replica cannot know it still leads: it stops leading.
            log.warning("lease renewal failed: %s", error_text(exc))
            epoch = None
        if epoch != self.epoch:
            if epoch is not None:
                log.info("leading (epoch %d)", epoch)
                await self._on_leadership()
            elif self.epoch is not None:
                log.warning("no longer leading")
            self.epoch = epoch
            self.wake.set()
        metrics.SCHEDULER_IS_LEADER.set(1 if self.leading else 0)

    async def _export_backlog(self) -> None:
        """``squall_processing_pending_items`` from the database: the leader exports it once a second."""
        try:
            counts = await store.pending_counts(self.engine)
        except Exception as exc:
            log.warning("reading the backlog failed: %s", error_text(exc))
            return
        for name in self.registry:
            metrics.PROCESSING_PENDING.labels(name).set(counts.get(name, 0))

    async def _on_leadership(self) -> None:
        for proc in self.registry.values():  # immediate ones too: their schedule picks up retries
            interval = proc.interval_seconds or self.settings.scheduler.default_interval_seconds
            await store.ensure_default_schedule(self.engine, proc.name, interval, proc.batch_size)
        for name, config in self.settings.dependencies.items():
            await store.put_dependency(self.engine, name, config.model_dump(), origin="config")

    # --- dependencies -------------------------------------------------------------------------------------

    async def _check_forever(self, stop: asyncio.Event) -> None:
        """The leader checks every dependency at its interval (the others only read the shared state)."""
        while not stop.is_set():
            if self.leading:
                try:
                    due = await store.dependencies_due(self.engine)
                    await asyncio.gather(*(checks.check_and_record(self.engine, d) for d in due))
                except Exception as exc:
                    log.warning("dependency checks failed: %s", error_text(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_WAKE_SECONDS)

    # --- ticks --------------------------------------------------------------------------------------------

    async def _tick_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            sleep = IDLE_WAKE_SECONDS
            if self.leading:
                try:
                    sleep = await self.fire_due()
                except Exception as exc:
                    log.warning("firing ticks failed: %s", error_text(exc))
                    sleep = 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.0, sleep))

    async def fire_due(self) -> float:
        """Fire every schedule that is due; answers how long to sleep until the next one is."""
        now = dt.datetime.now(dt.UTC)
        soonest = IDLE_WAKE_SECONDS
        fired = False
        for name, next_due, jitter in await store.due_schedules(self.engine):
            fire_at = next_due + schedules.jitter_offset(name, next_due, jitter)
            if fire_at <= now:
                await self.fire(name)
                fired = True
            else:
                soonest = min(soonest, (fire_at - now).total_seconds())
        # After firing, look again at once: the schedules just fired have new due times.
        return 0.0 if fired else soonest

    async def fire(self, name: str) -> int:
        """Run one schedule's due ticks in one transaction; answers the poll tasks emitted."""
        epoch = self.epoch
        if epoch is None:
            return 0
        tasks_of: dict[dt.datetime, list[events.PollTask]] = {}
        async with self.engine.begin() as conn:
            row = await store.lock_schedule(conn, name)
            if row is None or not await store.still_leader(conn, self.name, epoch):
                return 0
            now = row.db_now
            timing = schedules.Timing(row.interval_seconds, row.cron, row.timezone)
            dues, next_due = schedules.due_times(timing, row.next_due_at, now)
            if not dues:
                return 0
            tick_plan = schedules.plan(dues, now, row.misfire_policy, row.catch_up_limit, timing.grace)
            ticks: list[tuple[dt.datetime, str, int, str | None]] = [
                (due, "missed", 0, f"late by {(now - due).total_seconds():.3f} s") for due in tick_plan.missed
            ]
            proc = self.registry.get(row.processing)
            for due in tick_plan.run:
                if proc is None:
                    ticks.append((due, "skipped", 0, f"unknown processing {row.processing!r}"))
                    continue
                held = await store.gate(conn, row.processing, proc.dependencies)
                if held:
                    ticks.append((due, "held", 0, held))
                    continue
                batches = await store.poll_tasks_needed(
                    conn, row.processing, row.batch_size, row.max_batches_per_tick
                )
                if not batches:
                    ticks.append((due, "skipped", 0, "nothing pending beyond the poll tasks queued"))
                    continue
                key = schedules.tick_key(name, due)
                tasks_of[due] = [
                    events.PollTask(
                        task_id=events.poll_task_id(row.processing, f"{key}#{index}"),
                        processing=row.processing,
                        batch_size=row.batch_size,
                        tick_key=f"{key}#{index}",
                    )
                    for index in range(batches)
                ]
                ticks.append((due, "emitted", batches, None))
            recorded = await store.record_ticks(conn, name, epoch, ticks)
            emit = [task for due, tasks in tasks_of.items() if due in recorded for task in tasks]
            await store.record_poll_tasks(conn, [(t.task_id, t.processing, t.batch_size) for t in emit])
            # Published before the commit: if the commit fails, the tick stays due and is fired again
            # with the same ids (JetStream drops the copies); if we die after it, nothing is lost.
            for task in emit:
                await self.js.publish(
                    events.poll_subject(task.processing),
                    task.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": task.msg_id},
                )
            await store.advance_schedule(conn, name, next_due)
        emitted_at = dt.datetime.now(dt.UTC)
        for due, outcome, _, _ in ticks:
            if due in recorded:
                metrics.SCHEDULER_TICKS.labels(name, outcome).inc()
                if outcome == "emitted":
                    metrics.SCHEDULER_TICK_LAG.observe(max(0.0, (emitted_at - due).total_seconds()))
        return len(emit)

    async def problems(self) -> list[str]:
        return await dependency_problems(self.nc, self.engine)


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall scheduler``."""
    res = await open_resources(settings, "scheduler", stack, stop, pool_size=3)
    scheduler = Scheduler(settings, res.registry, res.engine, res.nc, res.name)
    ops = start_ops_server(settings.scheduler.http_port, scheduler.problems, settings.scheduler.http_host)
    stack.callback(ops.stop)
    await scheduler.run(stop)
