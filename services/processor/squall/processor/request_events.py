"""The request events consumer: records the requests that RequestSubmitted messages carry.

A message is acked only after the recording's transaction commits, and a redelivered message never has a
second effect: ``requests.recorded_at`` flips once, and only the transaction that flips it inserts items.
Items of ``immediate`` processings are computed before that transaction (:mod:`.new_items`) and inserted
with their results.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import events, metrics, otel, tracing
from squall.core.processings import Registry
from squall.core.store import recording
from squall.processor.new_items import compute_items

log = logging.getLogger("squall.processor")

REQUEST_WORKERS = 2
# Bytes of request events a fetch takes at most (beside fetch_batch messages): a message may carry a whole
# group of requests, so a backlog of them must not come 256 at a time (up to 64 MiB of JSON).
FETCH_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Delivered:
    """A request as a message delivered it: alone, or in a batch of several (one ack for them all)."""

    msg: Msg
    event: events.RequestEvent
    traceparent: str | None  # the W3C context its gateway sent


class RequestEventsConsumer:
    """Handles fetched request events: records their requests once each, then acks the messages."""

    def __init__(self, registry: Registry, engine: AsyncEngine) -> None:
        """``engine``: the pool the recording runs on (the hot one, each statement planned once)."""
        self.registry = registry
        # Processings whose pending items are recorded as chunks: taken whole by row locks, written once.
        self.chunk_sizes = {
            p.name: p.batch_size for p in registry.values() if p.mode == "batch" and p.claim == "lock"
        }
        self.engine = engine

    async def handle_requests(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        readable, submitted = await _read_requests(msgs)
        if not submitted:
            return
        if otel.tracer is None:
            await self.record_requests(readable, submitted, started, None)
        else:
            await self._record_in_spans(readable, submitted, started)

    async def _record_in_spans(self, msgs: list[Msg], submitted: list[Delivered], started: float) -> None:
        """Record with one consumer span per request, child of the gateway's publish: each request's trace
        goes on here."""
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
                    "messaging.batch.message_count": len(msgs),
                },
            )
            spans.append(span)
            traces.append(trace)
        try:
            fresh, finished = await self.record_requests(msgs, submitted, started, traces)
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
        recorded = await recording.record_requests(self.engine, list(distinct), items, dead)
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
            _log_recorded(submitted, fresh, finished, traces)
        _count_recorded(fresh, dead, items, len(distinct), elapsed)
        log.debug("recorded %d request(s)", len(fresh), extra={"count": len(fresh)})
        return fresh, finished


async def _read_requests(msgs: list[Msg]) -> tuple[list[Msg], list[Delivered]]:
    """The messages that could be read, and the requests they carry; a malformed one is dropped (term)."""
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
    return readable, submitted


def _log_recorded(
    submitted: list[Delivered],
    fresh: set[uuid.UUID],
    finished: dict[uuid.UUID, float],
    traces: list[tracing.TraceContext] | None,
) -> None:
    """Log each request recorded now, with its trace (debug level only: one line per request)."""
    for index, delivered in enumerate(submitted):
        event = delivered.event
        if event.task_id in fresh:
            trace = traces[index] if traces is not None else tracing.continue_from(delivered.traceparent)
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


def _count_recorded(
    fresh: set[uuid.UUID],
    dead: dict[uuid.UUID, str],
    items: recording.NewItems,
    distinct: int,
    elapsed: float,
) -> None:
    """Export how the batch's request tasks ended, how long they took, and their items' outcomes."""
    dead_now = sum(1 for t in fresh if t in dead)
    metrics.TASKS.labels("request", "", "succeeded").inc(len(fresh) - dead_now)
    if dead_now:
        metrics.TASKS.labels("request", "", "dead").inc(dead_now)
    metrics.TASK_DURATION.labels("request", "").observe(elapsed)
    # Counted per (processing, state), not per item: a batch holds thousands.
    # Of every request, unless some were recorded before (those count nothing now).
    outcomes = items.outcomes(None if len(fresh) == distinct else fresh)
    for (job, state), count in outcomes.items():
        if state != "pending":
            metrics.ITEMS_PROCESSED.labels(job, state).inc(count)
