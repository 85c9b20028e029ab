"""The processor: consumes request events and polling tasks from JetStream and writes PostgreSQL.

A message is acked only after its database transaction commits, and every write is guarded so a
redelivered message never has a second effect:

* request events: ``requests.recorded_at`` flips once; only the transaction that flips it inserts items.
  Items of ``immediate`` processings are computed before that transaction and inserted with their results.
* polling tasks: items are claimed (``FOR UPDATE SKIP LOCKED``, with a lease) in one transaction, computed,
  and written in a second one only where the task still owns them. A ``claim="lock"`` processing's items
  (recorded as chunks when a request has enough of them) are taken, computed and written in one
  transaction that holds their row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core import broker, events, metrics, otel, store, tracing
from squall.core.http import start_ops_server
from squall.core.lifecycle import open_resources
from squall.core.logs import error_text
from squall.core.processings import ItemFailed, Processing, ProcessingError, Registry
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings

log = logging.getLogger("squall.processor")

REQUEST_WORKERS = 2
TASK_WORKERS = 2
# Bytes of request events a fetch takes at most (beside fetch_batch messages): a message may carry a whole
# group of requests, so a backlog of them must not come 256 at a time (up to 64 MiB of JSON).
FETCH_BYTES = 1024 * 1024
SWEEP_INTERVAL_SECONDS = 15.0
FETCH_WAIT_SECONDS = 1.0
SWEEP_MIN_AGE_SECONDS = 30.0
# How often queue depths are sampled (one consumer-info request per consumer) and counts folded.
QUEUE_SAMPLE_SECONDS = 5.0


class Processor:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        engine: AsyncEngine,
        nc: Client,
        name: str,
        hot_engine: AsyncEngine | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        # Processings whose pending items are recorded as chunks: taken whole by row locks, written once.
        self.chunk_sizes = {
            p.name: p.batch_size for p in registry.values() if p.mode == "batch" and p.claim == "lock"
        }
        self.engine = engine
        # The recording's own pool, each statement planned once (db.create_engine); else ``engine``.
        self.hot_engine = hot_engine or engine
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.name = name
        self.stopping = asyncio.Event()
        self._in_flight = 0
        self.busy_since: dict[int, float] = {}  # consume loop → when it started its current batch
        self.queue_sample_seconds = QUEUE_SAMPLE_SECONDS
        self._queues_sampled = True  # the last sample worked (a failure is logged once, not every time)

    # --- running ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work within the grace period."""
        # One puller per worker loop: fetches on one puller must not overlap.
        pullers: list[broker.Puller] = []
        workers = []
        for stream, consumer, count, batch, max_bytes, handle in (
            (
                events.REQUESTS_STREAM,
                events.REQUESTS_CONSUMER,
                REQUEST_WORKERS,
                self.settings.processor.fetch_batch,
                FETCH_BYTES,
                self.handle_requests,
            ),
            (events.TASKS_STREAM, events.TASKS_CONSUMER, TASK_WORKERS, 1, None, self.handle_tasks),
        ):
            for _ in range(count):
                puller = broker.Puller(self.nc, stream, consumer, max_bytes)
                await puller.start()
                pullers.append(puller)
                workers.append(asyncio.create_task(self._consume(puller, batch, handle)))
        sweeper = asyncio.create_task(self._sweep_forever())
        watcher = asyncio.create_task(self._watch_forever())
        log.info("processor %s consuming (processings: %s)", self.name, ", ".join(self.registry))
        await stop.wait()
        log.info("stopping: no more fetches; finishing in-flight work")
        self.stopping.set()
        sweeper.cancel()
        watcher.cancel()
        _, pending = await asyncio.wait(workers, timeout=self.settings.processor.shutdown_grace_seconds)
        for worker in pending:
            worker.cancel()  # the handler naks what it holds: handed back, redelivered to another processor
        await asyncio.gather(*workers, sweeper, watcher, return_exceptions=True)
        for puller in pullers:
            await puller.stop()

    async def _consume(
        self,
        puller: broker.Puller,
        batch: int,
        handle: Callable[[list[Msg]], Awaitable[None]],
    ) -> None:
        while not self.stopping.is_set():
            try:
                msgs = await puller.fetch(batch, FETCH_WAIT_SECONDS)
            except TimeoutError:
                continue  # nothing to fetch
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: back off, the client reconnects
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            self._in_flight += len(msgs)
            metrics.IN_FLIGHT.set(self._in_flight)
            self.busy_since[id(puller)] = time.monotonic()
            try:
                await handle(msgs)
            except asyncio.CancelledError:
                await _nak_all(msgs)
                raise
            except Exception:
                # Database down or a bug: leave the messages to be redelivered after a short delay.
                log.exception("handling %d message(s) failed; they will be redelivered", len(msgs))
                await _nak_all(msgs, delay=1.0)
            finally:
                self._in_flight -= len(msgs)
                metrics.IN_FLIGHT.set(self._in_flight)
                del self.busy_since[id(puller)]

    # --- request events -----------------------------------------------------------------------------------

    async def handle_requests(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        readable: list[Msg] = []
        submitted: list[Delivered] = []
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                metrics.REDELIVERIES.labels("request").inc()
            try:
                carried = events.read_request_events(msg.data)
            except events.MalformedEvent as exc:
                log.error("dropping a malformed request event: %s", exc)
                await msg.term()
                continue
            readable.append(msg)
            # A group's requests carry their traces in their entries; a single event's is in the headers.
            sent = msg.headers.get(tracing.HEADER) if msg.headers else None
            submitted.extend(Delivered(msg, event, traceparent or sent) for event, traceparent in carried)
        if not submitted:
            return
        if otel.tracer is None:
            await self.record_requests(readable, submitted, started, None)
            return
        # One consumer span per request, child of the gateway's publish: each request's trace goes on here.
        spans, traces = [], []
        for delivered in submitted:
            event = delivered.event
            span, trace = otel.start_consumer(
                delivered.msg.subject,
                {tracing.HEADER: delivered.traceparent} if delivered.traceparent else None,
                {
                    "squall.rid": event.rid,
                    "squall.task_id": str(event.task_id),
                    "squall.processing": sorted(set(event.jobs)),
                    "squall.attempt": delivered.msg.metadata.num_delivered,
                    "messaging.batch.message_count": len(readable),
                },
            )
            spans.append(span)
            traces.append(trace)
        try:
            fresh, finished = await self.record_requests(readable, submitted, started, traces)
        except BaseException as exc:
            otel.end_all(spans, exc)
            raise
        for span, delivered in zip(spans, submitted, strict=True):
            otel.end(
                span,
                attributes={
                    "squall.recorded": delivered.event.task_id in fresh,
                    "squall.processed": delivered.event.task_id in finished,
                },
            )

    async def record_requests(
        self,
        msgs: list[Msg],
        submitted: list[Delivered],
        started: float,
        traces: list[tracing.TraceContext] | None,
    ) -> tuple[set[uuid.UUID], dict[uuid.UUID, float]]:
        """Record the requests ``msgs`` carry (each once), ack the messages; the tasks recorded now and the
        ones completed at recording. ``traces``: the exported spans' contexts, one per request, when export
        is on."""
        distinct: dict[uuid.UUID, events.RequestEvent] = {}  # a request twice in this batch: once
        for delivered in submitted:
            distinct.setdefault(delivered.event.task_id, delivered.event)
        items, dead = await compute_items(self.registry, self.chunk_sizes, list(distinct.values()))
        recorded = await store.record_requests(self.hot_engine, list(distinct), items, dead)
        # The requests recorded before (redeliveries, re-publishes) were left alone.
        fresh = {r.task_id for r in recorded}
        finished = {r.task_id: r.seconds for r in recorded if r.processed}
        for msg in msgs:
            await msg.ack()
        elapsed = time.perf_counter() - started
        for delivered in submitted:
            seconds = finished.get(delivered.event.task_id)
            if seconds is not None:
                # Completed at recording (immediate processings): labelled by the first item's processing.
                metrics.child(metrics.REQUEST_END_TO_END, delivered.event.jobs[0]).observe(seconds)
        if log.isEnabledFor(logging.DEBUG):
            for index, delivered in enumerate(submitted):
                event = delivered.event
                if event.task_id in fresh:
                    trace = (
                        traces[index] if traces is not None else tracing.continue_from(delivered.traceparent)
                    )
                    log.debug(
                        "request recorded%s",
                        " and processed" if event.task_id in finished else "",
                        extra={
                            "task_id": str(event.task_id),
                            "rid": event.rid,
                            "trace_id": trace.trace_id,
                            "span_id": trace.span_id,
                            "attempt": delivered.msg.metadata.num_delivered,
                        },
                    )
        dead_now = sum(1 for t in fresh if t in dead)
        metrics.TASKS.labels("request", "", "succeeded").inc(len(fresh) - dead_now)
        if dead_now:
            metrics.TASKS.labels("request", "", "dead").inc(dead_now)
        metrics.TASK_DURATION.labels("request", "").observe(elapsed)
        # Counted per (processing, state), not per item: a batch holds thousands.
        # Of every request, unless some were recorded before (those count nothing now).
        outcomes = items.outcomes(None if len(fresh) == len(distinct) else fresh)
        for (job, state), count in outcomes.items():
            if state != "pending":
                metrics.ITEMS_PROCESSED.labels(job, state).inc(count)
        log.debug("recorded %d request(s)", len(fresh), extra={"count": len(fresh)})
        return fresh, finished

    # --- polling tasks ------------------------------------------------------------------------------------

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
                    async with _keep_in_progress(msg, self.settings.processor.ack_wait_seconds):
                        await self.run_poll_task(task)
            await msg.ack()

    async def run_poll_task(self, task: events.PollTask) -> None:
        started = time.perf_counter()
        proc = self.registry.get(task.processing)
        if proc is not None and proc.claim == "lock":
            # One transaction: the items are held by row locks while they are computed, and written once.
            async with self.engine.begin() as conn:
                claimed = await self._start_poll(conn, task, proc)
                if claimed is None:
                    return
                outcomes, batch_error = await self._compute(proc, claimed)
                state = await self._finish_poll(conn, task, claimed, outcomes, batch_error, locked=True)
        else:
            # Claimed under a lease and committed, computed, then written in a second transaction.
            async with self.engine.begin() as conn:
                claimed = await self._start_poll(conn, task, proc)
            if claimed is None:
                return
            assert proc is not None
            outcomes, batch_error = await self._compute(proc, claimed)
            async with self.engine.begin() as conn:
                state = await self._finish_poll(conn, task, claimed, outcomes, batch_error)
        if otel.tracer is not None:
            otel.annotate({"squall.state": state, "squall.items": len(claimed)}, batch_error)
        metrics.TASKS.labels("poll", task.processing, state).inc()
        metrics.TASK_DURATION.labels("poll", task.processing).observe(time.perf_counter() - started)
        # Counted per state, not per item: a labels() lookup and a locked increment per item cost 930 us
        # per 1,000-item poll, 5 % of the processor's samples in the P2 batch benchmark.
        for state, count in Counter(outcome[0] for outcome in outcomes).items():
            metrics.ITEMS_PROCESSED.labels(task.processing, state if state != "pending" else "retried").inc(
                count
            )
        if claimed:
            log.info(
                "processed %d item(s)",
                len(claimed),
                extra={"task_id": str(task.task_id), "processing": task.processing, "count": len(claimed)},
            )

    async def _start_poll(
        self, conn: AsyncConnection, task: events.PollTask, proc: Processing | None
    ) -> store.Claimed | None:
        """Record the poll task and claim its items; None when there is nothing to run (a redelivery of a
        finished task, an unknown processing, or one held back by its dependencies)."""
        ctx = {"task_id": str(task.task_id), "processing": task.processing}
        await store.plan_as_a_queue(conn)
        if not await store.start_poll_task(conn, task.task_id, task.processing, task.batch_size):
            log.info("poll task already finished; skipping the redelivery", extra=ctx)
            return None
        if proc is None:
            await store.finish_poll_task(
                conn, task.task_id, "failed", 0, f"unknown processing {task.processing!r}"
            )
            metrics.TASKS.labels("poll", "", "failed").inc()
            return None
        held = await store.gate(conn, task.processing, proc.dependencies)
        if held:
            # Hand the batch back untouched: no item claimed, no attempt counted; the scheduler
            # emits new ticks once the processing may run again.
            await store.finish_poll_task(conn, task.task_id, "succeeded", 0, f"handed back: {held}")
            metrics.TASKS.labels("poll", task.processing, "handed_back").inc()
            log.info("handed back: %s", held, extra=ctx)
            return None
        if proc.claim == "lock":
            return await store.lock_items(conn, task.processing, task.task_id, task.batch_size)
        return await store.claim_items(
            conn, task.processing, task.task_id, task.batch_size, self.settings.processor.lease_seconds
        )

    @staticmethod
    async def _compute(proc: Processing, claimed: store.Claimed) -> tuple[list[Outcome], str | None]:
        if not claimed:
            return [], None
        return await run_batch(proc, claimed.numbers, attempts=claimed.attempts)

    async def _finish_poll(
        self,
        conn: AsyncConnection,
        task: events.PollTask,
        claimed: store.Claimed,
        outcomes: list[Outcome],
        batch_error: str | None,
        locked: bool = False,
    ) -> str:
        """Write the outcomes, mark the requests they complete, and record how the poll task ended."""
        if not locked:  # a new transaction (the locked one was set up by _start_poll)
            await store.plan_as_a_queue(conn)
        if claimed:
            touched = await store.write_results(conn, task.task_id, claimed, outcomes, locked)
            finished = await store.mark_processed(conn, touched)
            for _, seconds in finished:
                metrics.REQUEST_END_TO_END.labels(task.processing).observe(seconds)
        state = "succeeded"
        if batch_error:
            # Dead: no attempt left (or a permanent error); an operator may replay it.
            state = "failed" if any(o[0] == "pending" for o in outcomes) else "dead"
        await store.finish_poll_task(conn, task.task_id, state, len(claimed), batch_error)
        return state

    # --- lost events --------------------------------------------------------------------------------------

    async def _periodically(
        self, seconds: float, step: Callable[[], Awaitable[object]], what: str, *, now: bool = False
    ) -> None:
        """Run ``step`` every ``seconds`` (first right away if ``now``) until the processor stops. The loop
        ends on the stopping event, not on cancellation alone: a library call may swallow a cancellation
        (asyncio.wait_for does in Python 3.11), and a loop that then sleeps again would hold shutdown."""
        wait = not now
        while not self.stopping.is_set():
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), seconds)
                if self.stopping.is_set():
                    return
            wait = True
            try:
                await step()
            except Exception as exc:
                log.warning("%s failed: %s", what, error_text(exc))

    async def _sweep_forever(self) -> None:
        await self._periodically(SWEEP_INTERVAL_SECONDS, self.republish_lost, "sweep for lost request events")

    async def republish_lost(self, older_than_seconds: float = SWEEP_MIN_AGE_SECONDS) -> int:
        """Re-publish accepted requests whose event never reached a processor (the gateway died between
        recording and publishing). Only when the request consumer has no backlog: then an unrecorded
        request older than the sweep age is one whose event is gone, not one still waiting in the queue."""
        info = await self.js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        if info.num_pending or info.num_ack_pending:
            return 0
        lost = await store.unrecorded_payloads(self.engine, older_than_seconds, limit=500)
        for rid, task_id, payload in lost:
            await self.js.publish(
                events.REQUEST_SUBMITTED,
                payload,
                headers={"Nats-Msg-Id": events.request_msg_id(rid, task_id)},
            )
        if lost:
            log.warning("re-published %d request event(s) that never reached a processor", len(lost))
        return len(lost)

    # --- queue depths and counts ------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        await self._periodically(
            self.queue_sample_seconds, self._watch_once, "sampling queues and counts", now=True
        )

    async def _watch_once(self) -> None:
        await self.sample_queues()
        await store.fold_stat_deltas(self.engine)

    async def sample_queues(self) -> bool:
        """Export what each consumer has pending and unacked (what KEDA and the alerts watch). A failure
        leaves the last values and never disturbs consumption."""
        try:
            for stream, consumer in (
                (events.REQUESTS_STREAM, events.REQUESTS_CONSUMER),
                (events.TASKS_STREAM, events.TASKS_CONSUMER),
            ):
                info = await self.js.consumer_info(stream, consumer, timeout=2.0)
                metrics.QUEUE_PENDING.labels(consumer).set(info.num_pending or 0)
                metrics.QUEUE_ACK_PENDING.labels(consumer).set(info.num_ack_pending or 0)
        except Exception as exc:
            if self._queues_sampled:
                log.warning("cannot read the queue depths: %r", exc)
            self._queues_sampled = False
            return False
        self._queues_sampled = True
        return True

    # --- readiness ----------------------------------------------------------------------------------------

    async def problems(self) -> list[str]:
        return await dependency_problems(self.nc, self.engine) + await self.stalls()

    async def stalls(self) -> list[str]:
        """Liveness: a batch that never ends (a lock never granted, a hung call) fails /healthz too, so the
        orchestrator restarts the process rather than let it look healthy."""
        stuck = [time.monotonic() - since for since in self.busy_since.values()]
        if stuck and max(stuck) > self.settings.processor.stall_seconds:
            return [f"stalled: a batch has been running for {max(stuck):.0f} s"]
        return []


Outcome = store.Outcome
PENDING = store.PENDING


@dataclass(frozen=True, slots=True)
class Delivered:
    """A request as a message delivered it: alone, or in a batch of several (one ack for them all)."""

    msg: Msg
    event: events.RequestEvent
    traceparent: str | None  # the W3C context its gateway sent


async def compute_items(
    registry: Registry, chunk_sizes: Mapping[str, int], requests: Sequence[events.RequestEvent]
) -> tuple[store.NewItems, dict[uuid.UUID, str]]:
    """The items of ``requests`` (distinct) to record: computed for immediate processings, failed for
    unknown ones, pending (for poll tasks) for batch ones; and the request tasks that are dead, with the
    error: an item failed for good by a batch error (no attempt left, a permanent error) or an unknown
    processing. ``ItemFailed`` is an answer, not a task failure.

    Each immediate processing computes the items of every request at once, ``batch_size`` at a time. A
    request of one immediate processing whose items all came back as plain results (the usual case) is
    recorded from its slice of the results without an outcome per item; the others item by item."""
    items = store.NewItems(chunk_sizes)
    dead: dict[uuid.UUID, str] = {}
    outcomes: dict[uuid.UUID, list[Outcome]] = {}  # the requests recorded item by item
    # Per immediate processing, what it computes: (request, its item positions; None for all of them).
    by_job: dict[str, list[tuple[events.RequestEvent, list[int] | None]]] = defaultdict(list)
    for event in requests:
        jobs = event.jobs
        if jobs.count(jobs[0]) == len(jobs):  # one processing: the usual request
            proc = registry.get(jobs[0])
            if proc is not None and proc.mode == "immediate":
                by_job[jobs[0]].append((event, None))
                continue
            if proc is not None:  # every item left to poll tasks (the common case of a batch processing)
                outcomes[event.task_id] = [PENDING] * len(jobs)
                continue
        row = outcomes[event.task_id] = [PENDING] * len(jobs)
        wanted: dict[str, list[int]] = defaultdict(list)
        for position, job in enumerate(jobs):
            proc = registry.get(job)
            if proc is None:
                error = f"unknown processing {job!r}"
                row[position] = ("failed", None, error, None)
                dead.setdefault(event.task_id, error)
            elif proc.mode == "immediate":
                wanted[job].append(position)
        for job, listed in wanted.items():
            by_job[job].append((event, listed))
    for job, parts in by_job.items():
        proc = registry[job]
        numbers: list[int] = []
        for event, taken in parts:
            numbers.extend(event.numbers if taken is None else [event.numbers[p] for p in taken])
        # The first attempt; a retryable failure leaves the items pending for the processing's schedule,
        # which claims them after the backoff like a batch processing's.
        results: list[Any] = []
        failed: list[tuple[int, int, ProcessingError]] = []  # (start, stop, error) of batches that failed
        for start in range(0, len(numbers), proc.batch_size):
            batch = numbers[start : start + proc.batch_size]
            try:
                results.extend(await proc.run(batch))
            except ProcessingError as exc:
                failed.append((start, start + len(batch), exc))
                results.extend([None] * len(batch))
        offset = 0
        for event, taken in parts:
            count = len(event.numbers) if taken is None else len(taken)
            mine = results[offset : offset + count]
            whole = None
            if (
                taken is None
                and count >= store.CHUNK_MIN_ITEMS
                and not any(start < offset + count and offset < stop for start, stop, _ in failed)
                and not any(issubclass(kind, ItemFailed) for kind in set(map(type, mine)))
            ):
                whole = store.results_array(mine)
            if whole is not None:
                items.add_done(event.task_id, job, event.numbers, whole)
            else:
                row = outcomes.setdefault(event.task_id, [PENDING] * len(event.numbers))
                for index, position in enumerate(range(count) if taken is None else taken):
                    at = offset + index
                    failure = next((exc for start, stop, exc in failed if start <= at < stop), None)
                    if failure is None:
                        row[position] = outcome_of(mine[index])
                    else:
                        row[position] = failed_outcome(proc, failure, attempts=1)
                        if row[position][0] == "failed":
                            dead.setdefault(event.task_id, str(failure))
            offset += count
    for event in requests:
        if event.task_id in outcomes:
            items.add(event.task_id, event.numbers, event.jobs, outcomes[event.task_id])
    return items, dead


async def run_batch(
    proc: Processing, numbers: list[int], attempts: list[int]
) -> tuple[list[Outcome], str | None]:
    """Outcomes per number, and the error that failed the whole batch if it did."""
    try:
        results = await proc.run(numbers)
    except ProcessingError as exc:
        return [failed_outcome(proc, exc, made) for made in attempts], str(exc)
    return [outcome_of(value) for value in results], None


def outcome_of(value: Any) -> Outcome:
    """An item's outcome from what its processing answered for it."""
    if isinstance(value, ItemFailed):
        return ("failed", None, value.message, None)
    return ("done", store.result_json(value), None, None)


def failed_outcome(proc: Processing, exc: ProcessingError, attempts: int) -> Outcome:
    """An item's outcome when its whole batch failed: a retryable failure puts it back to pending, after
    the processing's backoff, while it has attempts left (``attempts`` made, this one included); else it
    fails."""
    if exc.retryable and attempts < proc.max_attempts:
        return ("pending", None, str(exc), proc.retry_delay(attempts))
    return ("failed", None, str(exc), None)


async def _nak_all(msgs: list[Msg], delay: float | None = None) -> None:
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)


@contextlib.asynccontextmanager
async def _keep_in_progress(msg: Msg, ack_wait: float):  # type: ignore[no-untyped-def]
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


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall processor``."""
    res = await open_resources(settings, "processor", stack, stop, hot_pool_size=REQUEST_WORKERS)
    longest = max((p.timeout_seconds for p in res.registry.values()), default=0.0)
    if longest >= settings.processor.stall_seconds:
        log.warning(
            "SQUALL_PROCESSOR__STALL_SECONDS (%s) is not above the longest processing timeout (%s): a long "
            "batch would be reported as stalled",
            settings.processor.stall_seconds,
            longest,
        )
    processor = Processor(settings, res.registry, res.engine, res.nc, res.name, res.hot_engine)
    ops = start_ops_server(
        settings.processor.http_port, processor.problems, settings.processor.http_host, processor.stalls
    )
    stack.callback(ops.stop)
    await processor.run(stop)
