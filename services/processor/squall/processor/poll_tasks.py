"""The poll task consumer: claims a processing's pending items, computes them and writes their outcomes.

Items are claimed (``FOR UPDATE SKIP LOCKED``, with a lease) in one transaction, computed, and written in
a second one only where the task still owns them. A ``claim="lock"`` processing's items (recorded as
chunks when a request has enough of them) are taken, computed and written in one transaction that holds
their row locks. The task message is acked only after its writes commit; a redelivery of a finished task
is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.msg import Msg
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core import events, metrics, otel, tracing
from squall.core.processings import Processing, Registry
from squall.core.settings import ProcessorSettings
from squall.core.store import polling, recording, scheduling
from squall.processor.outcomes import Outcome, run_batch

log = logging.getLogger("squall.processor")

TASK_WORKERS = 2


@dataclass(frozen=True, slots=True)
class PollRun:
    """How a poll task that claimed its items ended."""

    state: str  # the task's: succeeded, failed or dead
    claimed: polling.Claimed
    outcomes: list[Outcome]
    batch_error: str | None  # the error that failed the whole batch, if it did


class PollTaskConsumer:
    """Handles fetched poll tasks, one at a time: runs each, then acks its message."""

    def __init__(self, registry: Registry, engine: AsyncEngine, settings: ProcessorSettings) -> None:
        self.registry = registry
        self.engine = engine
        self.settings = settings

    async def handle_tasks(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                metrics.REDELIVERIES.labels("poll").inc()
            try:
                task = events.PollTask.model_validate_json(msg.data)
            except ValidationError as exc:
                log.error("dropping a malformed poll task: %s", exc.errors()[:3])
                await msg.term()
                continue
            attributes: otel.Attributes = {
                "squall.task_id": str(task.task_id),
                "squall.processing": task.processing,
                "squall.attempt": msg.metadata.num_delivered,
            }
            with otel.consuming(msg.subject, msg.headers, attributes) as trace:
                work = tracing.work(
                    trace,
                    task_id=str(task.task_id),
                    processing=task.processing,
                    attempt=msg.metadata.num_delivered,
                )
                with work:
                    async with keep_in_progress(msg, self.settings.ack_wait_seconds):
                        await self.run_poll_task(task)
            await msg.ack()

    async def run_poll_task(self, task: events.PollTask) -> None:
        started = time.perf_counter()
        proc = self.registry.get(task.processing)
        if proc is not None and proc.claim == "lock":
            ran = await self._run_locked(task, proc)
        else:
            ran = await self._run_leased(task, proc)
        if ran is not None:
            _count_poll(task, ran, started)

    async def _run_locked(self, task: events.PollTask, proc: Processing) -> PollRun | None:
        """One transaction: the items are held by row locks while they are computed, and written once."""
        async with self.engine.begin() as conn:
            claimed = await self._start_poll(conn, task, proc)
            if claimed is None:
                return None
            outcomes, batch_error = await _compute(proc, claimed)
            state = await _finish_poll(conn, task, claimed, outcomes, batch_error, locked=True)
        return PollRun(state, claimed, outcomes, batch_error)

    async def _run_leased(self, task: events.PollTask, proc: Processing | None) -> PollRun | None:
        """Claimed under a lease and committed, computed, then written in a second transaction."""
        async with self.engine.begin() as conn:
            claimed = await self._start_poll(conn, task, proc)
        if claimed is None:
            return None
        assert proc is not None
        outcomes, batch_error = await _compute(proc, claimed)
        async with self.engine.begin() as conn:
            state = await _finish_poll(conn, task, claimed, outcomes, batch_error)
        return PollRun(state, claimed, outcomes, batch_error)

    async def _start_poll(
        self, conn: AsyncConnection, task: events.PollTask, proc: Processing | None
    ) -> polling.Claimed | None:
        """Record the poll task and claim its items; None when there is nothing to run (a redelivery of a
        finished task, an unknown processing, or one held back by its dependencies)."""
        ctx = {"task_id": str(task.task_id), "processing": task.processing}
        await polling.plan_as_a_queue(conn)
        if not await polling.start_poll_task(conn, task.task_id, task.processing, task.batch_size):
            log.info("poll task already finished; skipping the redelivery", extra=ctx)
            return None
        if proc is None:
            await polling.finish_poll_task(
                conn, task.task_id, "failed", 0, f"unknown processing {task.processing!r}"
            )
            metrics.TASKS.labels("poll", "", "failed").inc()
            return None
        held = await scheduling.gate(conn, task.processing, proc.dependencies)
        if held:
            # Hand the batch back untouched: no item claimed, no attempt counted; the scheduler
            # emits new ticks once the processing may run again.
            await polling.finish_poll_task(conn, task.task_id, "succeeded", 0, f"handed back: {held}")
            metrics.TASKS.labels("poll", task.processing, "handed_back").inc()
            log.info("handed back: %s", held, extra=ctx)
            return None
        if proc.claim == "lock":
            return await polling.lock_items(conn, task.processing, task.task_id, task.batch_size)
        return await polling.claim_items(
            conn, task.processing, task.task_id, task.batch_size, self.settings.lease_seconds
        )


async def _compute(proc: Processing, claimed: polling.Claimed) -> tuple[list[Outcome], str | None]:
    if not claimed:
        return [], None
    return await run_batch(proc, claimed.numbers, attempts=claimed.attempts)


async def _finish_poll(
    conn: AsyncConnection,
    task: events.PollTask,
    claimed: polling.Claimed,
    outcomes: list[Outcome],
    batch_error: str | None,
    locked: bool = False,
) -> str:
    """Write the outcomes, mark the requests they complete, and record how the poll task ended."""
    if not locked:  # a new transaction (the locked one was set up by _start_poll)
        await polling.plan_as_a_queue(conn)
    if claimed:
        touched = await polling.write_results(conn, task.task_id, claimed, outcomes, locked)
        finished = await recording.mark_processed(conn, touched)
        for _, seconds in finished:
            metrics.REQUEST_END_TO_END.labels(task.processing).observe(seconds)
    state = "succeeded"
    if batch_error:
        # Dead: no attempt left (or a permanent error); an operator may replay it.
        state = "failed" if any(o[0] == "pending" for o in outcomes) else "dead"
    await polling.finish_poll_task(conn, task.task_id, state, len(claimed), batch_error)
    return state


def _count_poll(task: events.PollTask, ran: PollRun, started: float) -> None:
    """Annotate the task's span, export its metrics and log what it processed."""
    if otel.tracer is not None:
        otel.annotate({"squall.state": ran.state, "squall.items": len(ran.claimed)}, ran.batch_error)
    metrics.TASKS.labels("poll", task.processing, ran.state).inc()
    metrics.TASK_DURATION.labels("poll", task.processing).observe(time.perf_counter() - started)
    # Counted per state, not per item: a labels() lookup and a locked increment per item cost a visible
    # share of a large poll's time (see docs/history/benchmarks.md).
    for state, count in Counter(outcome[0] for outcome in ran.outcomes).items():
        metrics.ITEMS_PROCESSED.labels(task.processing, state if state != "pending" else "retried").inc(count)
    if ran.claimed:
        log.info(
            "processed %d item(s)",
            len(ran.claimed),
            extra={"task_id": str(task.task_id), "processing": task.processing, "count": len(ran.claimed)},
        )


@contextlib.asynccontextmanager
async def keep_in_progress(msg: Msg, ack_wait: float) -> AsyncIterator[None]:
    """Tell JetStream a long task is alive so it is not redelivered to a second processor meanwhile."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    beater = asyncio.create_task(beat())
    try:
        yield
    finally:
        beater.cancel()
