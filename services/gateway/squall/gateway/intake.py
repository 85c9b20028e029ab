"""The intake of a request, from a validated submission to the answer's task id.

Admission (the backlog under its limit) → record the acceptance in PostgreSQL, in one statement with the
concurrent ones (the unique rid decides new, identical re-submission or conflict) → publish the event to
JetStream (message id from the rid; concurrent fresh events share one message) → answer. If the publish
fails the acceptance is withdrawn and the client gets 503 with Retry-After; if the gateway dies between the
two, processors re-publish the stored event (the processor's sweep).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import events, metrics, otel, tracing
from squall.core.broker import AckedPublisher
from squall.core.http import ApiError
from squall.core.logs import error_text
from squall.core.rules import RETRY_AFTER_UNAVAILABLE_SECONDS
from squall.core.settings import GatewaySettings
from squall.core.store.intake import Accepted, RidConflict, Submitted, accept_requests, withdraw_request
from squall.gateway.admission import Admission
from squall.gateway.batching import Coalescer
from squall.gateway.validation import Submission

log = logging.getLogger("squall.gateway")

# Acceptances written per statement at most, and statements in flight at once (each holds a connection).
INTAKE_BATCH = 500
INTAKE_WRITERS = 2
# Fresh acceptances' events published together: requests per message at most, bytes per message at most
# (a single event above it goes alone), and publishes awaiting JetStream's ack at once.
OUTBOX_BATCH = 500
OUTBOX_BYTES = 256 * 1024
OUTBOX_PUBLISHES = 2


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A fresh request's event waiting in the outbox."""

    payload: bytes
    msg_id: str
    traceparent: str | None


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, None, {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SECONDS)})


class Intake:
    """Owns what a submission goes through: admission, the acceptances written together (group commit), the
    events published together, and the withdrawal of an acceptance whose event was not persisted."""

    def __init__(
        self,
        settings: GatewaySettings,
        engine: AsyncEngine,
        hot_engine: AsyncEngine,
        nc: Client,
        backlog_items: Callable[[], Awaitable[int]],
    ) -> None:
        self.settings = settings
        self.engine = engine
        # The intake INSERT's own pool, each statement planned once (db.create_engine); else ``engine``.
        self.hot_engine = hot_engine
        self.nc = nc
        self.publisher = AckedPublisher(nc)
        self.admission = Admission(backlog_items, settings.max_backlog_items, settings.admission_wait_seconds)
        # Concurrent submissions are accepted together: one INSERT (one round trip, one commit) per batch.
        self.acceptances: Coalescer[Submitted, Accepted] = Coalescer(
            self._accept_many, max_batch=INTAKE_BATCH, concurrency=INTAKE_WRITERS
        )
        # ... and their events share JetStream messages the same way (see :meth:`_publish_many`).
        self.outbox: Coalescer[Outgoing, None] = Coalescer(
            self._publish_many, max_batch=OUTBOX_BATCH, concurrency=OUTBOX_PUBLISHES
        )

    async def submit(self, sub: Submission) -> Accepted:
        """Accept a request (or find its identical earlier submission); make sure its event is published."""
        if not self.nc.is_connected:
            metrics.EVENTS_PUBLISHED.labels(events.REQUEST_SUBMITTED, "unavailable").inc()
            raise unavailable("the message broker is unreachable")
        await self.admission.admit()
        task_id = uuid.uuid4()
        payload = events.request_submitted_json(task_id, sub.rid, sub.items)
        try:
            accepted = await self.acceptances.submit(
                Submitted(task_id, sub.rid, sub.rid_is_int, sub.items, payload)
            )
        except RidConflict:
            raise ApiError(
                409, "rid_conflict", "this rid was submitted before with other items", "rid"
            ) from None
        if otel.tracer is not None:
            otel.annotate({"squall.rid": sub.rid, "squall.task_id": str(accepted.task_id)})

        def span_attributes() -> otel.Attributes:
            return {"squall.rid": sub.rid, "squall.task_id": str(accepted.task_id)}

        msg_id = events.request_msg_id(sub.rid, accepted.task_id)

        if accepted.created:
            try:
                await self.publish(events.REQUEST_SUBMITTED, payload, msg_id, span_attributes, together=True)
            except ApiError:
                await withdraw_request(self.engine, accepted.task_id)
                raise
            log.debug("request accepted", extra={"task_id": str(task_id), "rid": sub.rid})
        elif not accepted.recorded and accepted.payload is not None:
            # Identical re-submission of a request not recorded yet: publish again in case the first event
            # was lost; JetStream drops it as a duplicate otherwise, and processors record a request once.
            await self.publish(events.REQUEST_SUBMITTED, accepted.payload, msg_id, span_attributes)
        return accepted

    async def publish(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        span_attributes: Callable[[], otel.Attributes],
        together: bool = False,
    ) -> None:
        """Publish and wait for JetStream's ack; ApiError 503 when it cannot be persisted now.
        ``span_attributes`` is called only when spans are exported. ``together``: a fresh request's event,
        sent in one message with the others waiting (:meth:`_publish_many`)."""
        if not self.nc.is_connected:
            metrics.EVENTS_PUBLISHED.labels(subject, "unavailable").inc()
            raise unavailable("the message broker is unreachable")
        span = None
        if otel.tracer is None:
            traceparent = tracing.current_traceparent()
        else:  # the processor's span becomes the child of this publish
            span, sent = otel.start_producer(subject, msg_id, span_attributes())
            traceparent = sent.traceparent
        started = time.perf_counter()
        try:
            if together:
                await self.outbox.submit(Outgoing(payload, msg_id, traceparent))
            else:
                await self._publish_one(subject, payload, msg_id, traceparent)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            if span is not None:
                otel.end(span, exc)
            metrics.EVENTS_PUBLISHED.labels(subject, "failed").inc()
            log.warning("publish to %s failed: %s", subject, error_text(exc))
            raise unavailable("the message broker did not persist the request") from None
        if span is not None:
            otel.end(span)
        metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)
        metrics.child(metrics.EVENTS_PUBLISHED, subject, "ok").inc()

    async def _accept_many(self, batch: Sequence[Submitted]) -> list[Accepted | Exception]:
        metrics.INTAKE_BATCH.observe(len(batch))
        return await accept_requests(self.hot_engine, batch)

    async def _publish_one(self, subject: str, payload: bytes, msg_id: str, traceparent: str | None) -> None:
        headers = {"Nats-Msg-Id": msg_id}
        if traceparent is not None:
            headers[tracing.HEADER] = traceparent
        await self.publisher.publish(subject, payload, headers, self.settings.publish_timeout_seconds)

    async def _publish_many(self, batch: Sequence[Outgoing]) -> list[BaseException | None]:
        """Fresh requests' events in as few messages as :data:`OUTBOX_BYTES` (or the broker's
        ``max_payload``, if less) allows, published at once: one publish and one ack per message (and one
        delivery and one ack on the processor's side) rather than per request. A message of one request is
        its plain event, with its message id. A message of several has no message id: nothing publishes it
        again (a failed one is withdrawn and answered 503, and a retry or the sweep republishes each request
        as its own event)."""
        groups = _groups_within(batch, min(OUTBOX_BYTES, self.nc.max_payload - 1024))
        results = await asyncio.gather(
            *(
                self._publish_one(
                    events.REQUEST_SUBMITTED, group[0].payload, group[0].msg_id, group[0].traceparent
                )
                if len(group) == 1
                else self.publisher.publish(
                    events.REQUEST_SUBMITTED,
                    events.request_batch_json([(out.payload, out.traceparent) for out in group]),
                    {},
                    self.settings.publish_timeout_seconds,
                )
                for group in groups
            ),
            return_exceptions=True,
        )
        metrics.PUBLISH_BATCH.observe(len(batch))
        return [
            result if isinstance(result, BaseException) else None
            for group, result in zip(groups, results, strict=True)
            for _ in group
        ]


def _groups_within(batch: Sequence[Outgoing], budget: int) -> list[list[Outgoing]]:
    """The events in order, cut into groups of at most ``budget`` bytes each (a larger event alone)."""
    groups: list[list[Outgoing]] = [[]]
    size = 0
    for out in batch:
        # An entry is its event and, around it, its traceparent and the keys: under 100 bytes more.
        entry = len(out.payload) + 100
        if groups[-1] and size + entry > budget:
            groups.append([])
            size = 0
        groups[-1].append(out)
        size += entry
    return groups
