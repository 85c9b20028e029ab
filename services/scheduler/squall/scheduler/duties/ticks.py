"""Duty: fire the schedules that are due, each tick exactly once, emitting its poll tasks.

Every tick is fired in one transaction that locks its schedule row, checks that this replica still holds
the lease *with the same epoch*, records the tick in ``schedule_ticks`` (primary key: schedule and due
time, so a tick is recorded once, ever), publishes its poll tasks (message ids derived from the tick, so
JetStream drops a second emission) and moves the schedule's next due time. A crash before the commit
leaves the tick due: the next leader fires it again with the same task and message ids.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core import events, metrics, schedules
from squall.core.processings import Registry
from squall.core.store import scheduling
from squall.scheduler.leadership import Leadership

IDLE_WAKE_SECONDS = 0.5  # the longest the leader sleeps between looks at the schedules

Tick = tuple[dt.datetime, str, int, str | None]  # due time, outcome, poll tasks emitted, why not


class Ticks:
    name = "firing ticks"
    every_seconds = IDLE_WAKE_SECONDS  # also the pause after a failure

    def __init__(
        self, registry: Registry, engine: AsyncEngine, js: JetStreamContext, leadership: Leadership
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.js = js
        self.leadership = leadership

    async def run_once(self) -> float:
        return await self.fire_due()

    async def fire_due(self) -> float:
        """Fire every schedule that is due; answers how long to sleep until the next one is."""
        now = dt.datetime.now(dt.UTC)
        soonest = IDLE_WAKE_SECONDS
        fired = False
        for name, next_due, jitter in await scheduling.due_schedules(self.engine):
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
        epoch = self.leadership.epoch
        if epoch is None:
            return 0
        async with self.engine.begin() as conn:
            row = await scheduling.lock_schedule(conn, name)
            if row is None or not await scheduling.still_leader(conn, self.leadership.replica, epoch):
                return 0
            now = row.db_now
            timing = schedules.Timing(row.interval_seconds, row.cron, row.timezone)
            dues, next_due = schedules.due_times(timing, row.next_due_at, now)
            if not dues:
                return 0
            tick_plan = schedules.plan(dues, now, row.misfire_policy, row.catch_up_limit, timing.grace)
            missed: list[Tick] = [
                (due, "missed", 0, f"late by {(now - due).total_seconds():.3f} s") for due in tick_plan.missed
            ]
            run, tasks_of = await self._decide_runs(conn, name, row, tick_plan.run)
            ticks = missed + run
            recorded = await scheduling.record_ticks(conn, name, epoch, ticks)
            emit = [task for due, tasks in tasks_of.items() if due in recorded for task in tasks]
            await scheduling.record_poll_tasks(conn, [(t.task_id, t.processing, t.batch_size) for t in emit])
            # Published before the commit: if the commit fails, the tick stays due and is fired again
            # with the same ids (JetStream drops the copies); if we die after it, nothing is lost.
            for task in emit:
                await self.js.publish(
                    events.poll_subject(task.processing),
                    task.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": task.msg_id},
                )
            await scheduling.advance_schedule(conn, name, next_due)
        _count_ticks(name, ticks, recorded)
        return len(emit)

    async def _decide_runs(
        self, conn: AsyncConnection, name: str, row: Any, dues: list[dt.datetime]
    ) -> tuple[list[Tick], dict[dt.datetime, list[events.PollTask]]]:
        """The outcome of each tick due a run (held, skipped or emitted); the poll tasks of those emitted."""
        ticks: list[Tick] = []
        tasks_of: dict[dt.datetime, list[events.PollTask]] = {}
        proc = self.registry.get(row.processing)
        for due in dues:
            if proc is None:
                ticks.append((due, "skipped", 0, f"unknown processing {row.processing!r}"))
                continue
            held = await scheduling.gate(conn, row.processing, proc.dependencies)
            if held:
                ticks.append((due, "held", 0, held))
                continue
            batches = await scheduling.poll_tasks_needed(
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
        return ticks, tasks_of


def _count_ticks(name: str, ticks: list[Tick], recorded: set[dt.datetime]) -> None:
    """Metrics of the ticks this transaction recorded (not of those another leader had already)."""
    emitted_at = dt.datetime.now(dt.UTC)
    for due, outcome, _, _ in ticks:
        if due in recorded:
            metrics.SCHEDULER_TICKS.labels(name, outcome).inc()
            if outcome == "emitted":
                metrics.SCHEDULER_TICK_LAG.observe(max(0.0, (emitted_at - due).total_seconds()))
