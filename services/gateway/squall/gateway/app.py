"""The gateway: Squall's HTTP API (Tornado). Validates input, publishes events, reads state.

Intake of a request: validate → record the acceptance in PostgreSQL, in one statement with the concurrent
ones (unique rid: this decides new, identical re-submission or conflict) → publish the event to JetStream
(message id from the rid) → answer.
If the publish fails the acceptance is withdrawn and the client gets 503 with Retry-After; if the gateway
dies between the two, processors re-publish the stored event (see the processor's sweep).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from http.client import responses
from typing import Any

import nats.errors
import nats.js.errors
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.iostream
import tornado.web
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import events, metrics, otel, store, tracing
from squall.core.auth import Authenticator
from squall.core.batching import Coalescer
from squall.core.broker import AckedPublisher
from squall.core.http import (
    INTERNAL_ERROR,
    ApiError,
    NotFoundHandler,
    json_bytes,
    known_failure,
    log_failure,
    ops_routes,
)
from squall.core.lifecycle import open_resources
from squall.core.logs import error_text
from squall.core.processings import Registry
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings
from squall.gateway import admin, legacy, stats, validation
from squall.gateway.admission import Admission
from squall.gateway.base import BaseHandler, authorize, observe_request, read_submission, record_request
from squall.gateway.openapi import openapi_spec

log = logging.getLogger("squall.gateway")

RETRY_AFTER_SECONDS = "2"
# Acceptances written per statement at most, and statements in flight at once (each holds a connection).
INTAKE_BATCH = 500
INTAKE_WRITERS = 2
# Fresh acceptances' events published together: requests per message at most, bytes per message at most
# (a single event above it goes alone), and publishes awaiting JetStream's ack at once.
OUTBOX_BATCH = 500
OUTBOX_BYTES = 256 * 1024
OUTBOX_PUBLISHES = 2


class GatewayApp(tornado.web.Application):
    """The Tornado application, with its dependencies injected."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        engine: AsyncEngine,
        nc: Client,
        hot_engine: AsyncEngine | None = None,
    ) -> None:
        self.squall = settings
        self.registry = registry
        self.engine = engine
        # The intake INSERT's own pool, each statement planned once (db.create_engine); else ``engine``.
        self.hot_engine = hot_engine or engine
        self.nc = nc
        self.publisher = AckedPublisher(nc)
        self.accepting = True
        self.authenticator = Authenticator(settings.auth, engine)
        self.stats = stats.StatsCache(engine)
        self.admission = Admission(
            self.stats.backlog_items,
            settings.gateway.max_backlog_items,
            settings.gateway.admission_wait_seconds,
        )
        # Concurrent submissions are accepted together: one INSERT (one round trip, one commit) per batch.
        self.intake: Coalescer[store.Submitted, store.Accepted] = Coalescer(
            self._accept_many, max_batch=INTAKE_BATCH, concurrency=INTAKE_WRITERS
        )
        # ... and their events share JetStream messages the same way (see :meth:`_publish_many`).
        self.outbox: Coalescer[Outgoing, None] = Coalescer(
            self._publish_many, max_batch=OUTBOX_BATCH, concurrency=OUTBOX_PUBLISHES
        )
        super().__init__(
            [
                (r"/v1/requests", SubmitOtherMethods),
                (r"/v1/requests/([^/]+)", RequestStatusHandler),
                (r"/v1/tasks", TasksHandler),
                (r"/v1/tasks/([^/]+)", TaskHandler),
                (r"/v1/tasks/([^/]+)/retry", TaskRetryHandler),
                (r"/v1/openapi\.json", OpenApiHandler),
                (r"/number_request", LegacyHandler),
                *admin.ROUTES,
                *stats.routes(self.stats),
                *ops_routes(self.problems),
            ],
            default_handler_class=NotFoundHandler,
            log_function=record_request,
            compress_response=False,
        )

    def find_handler(  # type: ignore[override]  # Tornado's Router allows any delegate; Application narrows
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.httputil.HTTPMessageDelegate:
        if request.method == "POST" and request.path == SUBMIT_ROUTE:
            return SubmitDelegate(self, request)
        return super().find_handler(request, **kwargs)

    async def _accept_many(self, batch: Sequence[store.Submitted]) -> list[store.Accepted | Exception]:
        metrics.INTAKE_BATCH.observe(len(batch))
        return await store.accept_requests(self.hot_engine, batch)

    async def problems(self) -> list[str]:
        found = await dependency_problems(self.nc, self.engine)
        if not self.accepting:
            found.append("shutting down")
        return found

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
            raise _unavailable("the message broker is unreachable")
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
            raise _unavailable("the message broker did not persist the request") from None
        if span is not None:
            otel.end(span)
        metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)
        metrics.child(metrics.EVENTS_PUBLISHED, subject, "ok").inc()

    async def _publish_one(self, subject: str, payload: bytes, msg_id: str, traceparent: str | None) -> None:
        headers = {"Nats-Msg-Id": msg_id}
        if traceparent is not None:
            headers[tracing.HEADER] = traceparent
        await self.publisher.publish(subject, payload, headers, self.squall.gateway.publish_timeout_seconds)

    async def _publish_many(self, batch: Sequence[Outgoing]) -> list[BaseException | None]:
        """Fresh requests' events in as few messages as :data:`OUTBOX_BYTES` (or the broker's
        ``max_payload``, if less) allows, published at once: one publish and one ack per message (and one
        delivery and one ack on the processor's side) rather than per request. A message of one request is
        its plain event, with its message id. A message of several has no message id: nothing publishes it
        again (a failed one is withdrawn and answered 503, and a retry or the sweep republishes each request
        as its own event)."""
        budget = min(OUTBOX_BYTES, self.nc.max_payload - 1024)  # within the broker's own limit
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
                    self.squall.gateway.publish_timeout_seconds,
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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A fresh request's event waiting in the outbox."""

    payload: bytes
    msg_id: str
    traceparent: str | None


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, None, {"Retry-After": RETRY_AFTER_SECONDS})


def begin_intake_trace(route: str, header: str | None) -> otel.Span | None:
    """A request that starts work continues the caller's W3C trace: as a server span when spans are
    exported (begun before authentication, so refusals are traced too), else as the current context."""
    if otel.tracer is None:
        tracing.begin(tracing.continue_from(header))
        return None
    return otel.begin_server("POST", route, header)


class IntakeHandler(BaseHandler):
    """A route whose POST starts work (a replay, a legacy submission): see :func:`begin_intake_trace`."""

    _span: otel.Span | None = None

    async def prepare(self) -> None:
        if self.request.method == "POST":
            self._span = begin_intake_trace(self.route, self.request.headers.get(tracing.HEADER))
        await super().prepare()

    def on_finish(self) -> None:
        if self._span is not None:
            otel.end_server(self._span, self.get_status())
        super().on_finish()


SUBMIT_ROUTE = "/v1/requests"


class SubmitDelegate(tornado.httputil.HTTPMessageDelegate):
    """``POST /v1/requests``, the hot path, served without Tornado's ``RequestHandler`` (whose per-request
    set-up, output buffering and logging hook cost more CPU than the rest of Tornado's HTTP handling,
    docs/benchmarks.md) but with the same checks, answers, trace and metrics as every other route."""

    _answering: set[asyncio.Future[None]] = set()  # strong references: the loop keeps only weak ones

    def __init__(self, app: GatewayApp, request: tornado.httputil.HTTPServerRequest) -> None:
        self.app = app
        self.request = request
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        self.request.body = b"".join(self._chunks)
        self._chunks = []
        answering = asyncio.ensure_future(self._answer())
        self._answering.add(answering)
        answering.add_done_callback(self._answering.discard)

    async def _answer(self) -> None:
        request = self.request
        span = begin_intake_trace(SUBMIT_ROUTE, request.headers.get(tracing.HEADER))
        headers: dict[str, str] = {}
        try:
            await authorize(self.app, request, "submit")
            sub = read_submission(self.app, request, validation.parse_submission)
            accepted = await submit(self.app, sub)
            status, body = (202 if accepted.created else 200), submission_answer(sub, accepted)
        except Exception as exc:
            log_failure("POST", SUBMIT_ROUTE, exc)
            error = known_failure(exc) or INTERNAL_ERROR
            status, body, headers = error.status, error.body(), dict(error.headers)
        headers["Content-Type"] = "application/json"
        answer(request, status, json_bytes(body), headers)
        if span is not None:
            otel.end_server(span, status)
        observe_request(SUBMIT_ROUTE, "POST", status, request.request_time())


def submission_answer(sub: validation.Submission, accepted: store.Accepted) -> dict[str, Any]:
    task_id = str(accepted.task_id)
    return {
        "task_id": task_id,
        "rid": store.present_rid(sub.rid, sub.rid_is_int),
        "created": accepted.created,
        "links": {"task": f"/v1/tasks/{task_id}", "request": f"/v1/requests/{sub.rid}"},
    }


def answer(
    request: tornado.httputil.HTTPServerRequest, status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Write a whole response on the request's connection (nothing happens if the client has gone)."""
    connection = request.connection
    assert connection is not None
    headers["Content-Length"] = str(len(body))
    headers["Date"] = _http_date()
    connection.write_headers(
        tornado.httputil.ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown")),
        tornado.httputil.HTTPHeaders(headers),
        body,
    )
    connection.finish()


_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header (RFC 9110 asks origin servers for it), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, tornado.httputil.format_timestamp(now))
    return _date[1]


class SubmitOtherMethods(BaseHandler):
    """``/v1/requests`` by any method but POST (:class:`SubmitDelegate` serves it): 405, ``Allow: POST``."""

    route = SUBMIT_ROUTE
    scope = "submit"

    @classmethod
    def allowed_methods(cls) -> list[str]:
        return ["POST"]


async def submit(app: GatewayApp, sub: validation.Submission) -> store.Accepted:
    """Accept a request (or find its identical earlier submission) and make sure its event is published."""
    if not app.nc.is_connected:
        metrics.EVENTS_PUBLISHED.labels(events.REQUEST_SUBMITTED, "unavailable").inc()
        raise _unavailable("the message broker is unreachable")
    await app.admission.admit()
    task_id = uuid.uuid4()
    payload = events.request_submitted_json(task_id, sub.rid, sub.items)
    try:
        accepted = await app.intake.submit(
            store.Submitted(task_id, sub.rid, sub.rid_is_int, sub.items, payload)
        )
    except store.RidConflict:
        raise ApiError(409, "rid_conflict", "this rid was submitted before with other items", "rid") from None
    if otel.tracer is not None:
        otel.annotate({"squall.rid": sub.rid, "squall.task_id": str(accepted.task_id)})

    def span_attributes() -> otel.Attributes:
        return {"squall.rid": sub.rid, "squall.task_id": str(accepted.task_id)}

    msg_id = events.request_msg_id(sub.rid, accepted.task_id)

    if accepted.created:
        try:
            await app.publish(events.REQUEST_SUBMITTED, payload, msg_id, span_attributes, together=True)
        except ApiError:
            await store.withdraw_request(app.engine, accepted.task_id)
            raise
        log.debug("request accepted", extra={"task_id": str(task_id), "rid": sub.rid})
    elif not accepted.recorded and accepted.payload is not None:
        # Identical re-submission of a request not recorded yet: publish again in case the first event
        # was lost; JetStream drops it as a duplicate otherwise, and processors record a request once.
        await app.publish(events.REQUEST_SUBMITTED, accepted.payload, msg_id, span_attributes)
    return accepted


class TasksHandler(BaseHandler):
    """``GET /v1/tasks?state=&kind=&processing=&limit=&cursor=``: tasks, newest first, a page at a time."""

    route = "/v1/tasks"

    async def get(self) -> None:
        query = validation.parse_task_query(
            {k: v[-1].decode(errors="replace") for k, v in self.request.query_arguments.items() if v}
        )
        tasks, following = await store.list_tasks(
            self.app.engine, query.state, query.kind, query.processing, query.limit, query.after
        )
        self.write_json({"tasks": tasks, "next_cursor": validation.encode_cursor(following)})


class TaskRetryHandler(IntakeHandler):
    """``POST /v1/tasks/{task_id}/retry``: replay a dead poll task (a second call runs nothing)."""

    route = "/v1/tasks/{task_id}/retry"
    scope = "admin"  # replaying dead work is an operator's decision

    async def post(self, raw_id: str) -> None:
        task_id = validation.parse_task_id(raw_id)
        if task_id is None:
            raise ApiError(404, "not_found", "no task with this id", "task_id")
        async with self.app.engine.begin() as conn:
            outcome, row = await store.replay_task(conn, task_id)
            if outcome == "missing":
                raise ApiError(404, "not_found", "no task with this id", "task_id")
            if outcome == "not_dead":
                raise ApiError(
                    409, "not_dead", f"only a dead task can be replayed; this one is {row.state}", "task_id"
                )
            if row.kind == "poll":  # a request task's items wait for their processing's schedule
                # Published before the commit: should the commit fail, the task is still dead and the message
                # is skipped by the processor; the client replays again.
                replay = events.PollTask(
                    task_id=task_id,
                    processing=row.processing,
                    batch_size=row.batch_size,
                    tick_key=f"replay-{uuid.uuid4().hex}",
                )
                if otel.tracer is not None:
                    otel.annotate({"squall.task_id": str(task_id), "squall.processing": row.processing})
                await self.app.publish(
                    events.poll_subject(row.processing),
                    replay.model_dump_json().encode(),
                    replay.msg_id,
                    lambda: {"squall.task_id": str(task_id), "squall.processing": row.processing},
                )
        task = await store.get_task(self.app.engine, task_id)
        self.write_json(task, 202)


class TaskHandler(BaseHandler):
    route = "/v1/tasks/{task_id}"

    async def get(self, raw_id: str) -> None:
        task_id = validation.parse_task_id(raw_id)
        task = await store.get_task(self.app.engine, task_id) if task_id else None
        if task is None:
            raise ApiError(404, "not_found", "no task with this id", "task_id")
        self.write_json(task)


class RequestStatusHandler(BaseHandler):
    route = "/v1/requests/{rid}"

    async def get(self, rid: str) -> None:  # Tornado has already percent-decoded the path argument
        request = await store.get_request(self.app.engine, rid)
        if request is None:
            raise ApiError(404, "not_found", "no request with this rid", "rid")
        self.write_json(request)


class OpenApiHandler(BaseHandler):
    route = "/v1/openapi.json"
    scope = None  # public: clients generate code from it

    def get(self) -> None:
        self.write_json(openapi_spec(sorted(self.app.registry)))


class LegacyHandler(IntakeHandler):
    """The original example's contract, kept so its clients and their own scripts work unchanged: the
    original's status codes, its POST answer, and bodies read whatever their ``Content-Type`` claims."""

    route = "/number_request"
    scope = {"POST": "submit", "GET": "read"}
    legacy_route = True

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", legacy.CONTENT_TYPE)

    async def post(self) -> None:
        gw = self.app.squall.gateway
        if len(self.request.body) > gw.max_body_bytes:
            raise ApiError(
                413, "body_too_large", f"the body is larger than {gw.max_body_bytes} bytes", "body"
            )
        doc = validation.legacy_document(self.request.body)
        sub = validation.parse_legacy_submission(doc, self.app.registry, gw.max_items, gw.max_rid_length)
        accepted = await submit(self.app, sub)
        task_id = str(accepted.task_id)
        if gw.legacy_post_answer == "original":
            self.set_status(201)
            self.finish(legacy.original_post_body(task_id))
        else:
            self.write_json({"task_id": task_id, "rid": store.present_rid(sub.rid, sub.rid_is_int)}, 201)

    async def get(self) -> None:
        lookup = validation.legacy_lookup(self.request.body, self.request.query_arguments)
        if "rid" in lookup:  # the original looked a rid up first, whatever else was given
            if lookup["rid"] is None:
                raise ApiError(422, "invalid_type", "rid must be an integer or a string", "rid")
            rid = validation.parse_rid(lookup["rid"], self.app.squall.gateway.max_rid_length)[0]
        else:
            task_id = validation.parse_task_id(lookup["task_id"])
            of_task = await store.rid_of_task(self.app.engine, task_id) if task_id else None
            if of_task is None:
                # The original's 201 and status, with the error beside it for clients that read one.
                error = ApiError(404, "not_found", "no request with this task_id", "task_id")
                self.write_json({"status": legacy.UNKNOWN_TASK, **error.body()}, 201)
                return
            rid = of_task
        request = await store.get_request(self.app.engine, rid)
        if request is None:
            self.write_json(legacy.UNKNOWN_RID, 200)
            return
        self.write_json(legacy.status_body(request), 201)


_OVER_CAPACITY_BODY = json_bytes(
    {"error": {"code": "too_many_connections", "message": "too many open connections", "field": None}}
)
_OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY)
)


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """Refuses connections beyond ``max_connections`` (503, closed) so a flood cannot exhaust the gateway,
    and cuts off clients too slow with a request's headers (or idle between requests) or its body.

    The deadlines are kept here rather than by Tornado, which races every header and body read against a
    timer of its own (``gen.with_timeout``, ~9 µs per read, ``python -m bench.deadlines``; 4 to 6 % of the
    gateway's CPU per request, docs/benchmarks.md): each connection has one deadline, moved on as its
    requests begin and their headers arrive, and a sweep every :data:`SWEEP_SECONDS` closes the
    connections still waiting on their client past it."""

    max_connections = 10_000
    SWEEP_SECONDS = 0.5
    _refusals: set[asyncio.Future[None]] = set()

    def cut_off_slow_clients(self, header_seconds: float, body_seconds: float) -> None:
        self.header_seconds, self.body_seconds = header_seconds, body_seconds
        self.conn_params.header_timeout = self.conn_params.body_timeout = None
        self._deadlines: dict[tornado.iostream.IOStream, float] = {}
        self._sweeper = tornado.ioloop.PeriodicCallback(self._sweep, self.SWEEP_SECONDS * 1000)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        super().add_sockets(sockets)
        self._sweeper.start()

    def stop(self) -> None:
        self._sweeper.stop()
        super().stop()

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        if len(self._connections) >= self.max_connections:
            metrics.HTTP_REQUESTS.labels("over_capacity", "other", "503").inc()
            refusal = asyncio.ensure_future(_refuse(stream))
            self._refusals.add(refusal)
            refusal.add_done_callback(self._refusals.discard)
            return
        super().handle_stream(stream, address)

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        """A connection begins waiting for its next request's headers."""
        stream: tornado.iostream.IOStream = request_conn.stream  # type: ignore[attr-defined]
        self._deadlines[stream] = time.monotonic() + self.header_seconds
        delegate = super().start_request(server_conn, request_conn)
        return _BodyDeadline(delegate, self._deadlines, stream, self.body_seconds)

    def on_close(self, server_conn: object) -> None:
        self._deadlines.pop(server_conn.stream, None)  # type: ignore[attr-defined]
        super().on_close(server_conn)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self._connections):
            stream = conn.stream
            if stream.reading() and self._deadlines.get(stream, now) < now:
                log.info("cut off a client too slow with its request (or idle too long)")
                stream.close()


class _BodyDeadline(tornado.httputil.HTTPMessageDelegate):
    """Moves its connection's deadline to the body's once the headers are in."""

    def __init__(
        self,
        delegate: tornado.httputil.HTTPMessageDelegate,
        deadlines: dict[tornado.iostream.IOStream, float],
        stream: tornado.iostream.IOStream,
        body_seconds: float,
    ) -> None:
        self._delegate, self._deadlines, self._stream = delegate, deadlines, stream
        self._body_seconds = body_seconds

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._deadlines[self._stream] = time.monotonic() + self._body_seconds
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


async def _refuse(stream: tornado.iostream.IOStream) -> None:
    """Answer 503 and close without a reset: the client reads the answer, not ECONNRESET."""
    try:
        await stream.write(_OVER_CAPACITY)
        stream.socket.shutdown(socket.SHUT_WR)
        # Read what the client sent (a little, briefly): closing with unread data sends a TCP reset.
        await asyncio.wait_for(stream.read_bytes(65536, partial=True), timeout=0.5)
    except (OSError, TimeoutError, tornado.iostream.StreamClosedError):
        pass
    finally:
        stream.close()


def make_server(app: GatewayApp) -> CappedHTTPServer:
    gw = app.squall.gateway
    server = CappedHTTPServer(
        app,
        # Behind a proxy the client's address (rate limits, trusted networks) is in X-Forwarded-For;
        # without one a client could claim any address, so it is opt-in.
        xheaders=gw.trust_forwarded_headers,
        # Bodies up to twice the limit are read so the handler can answer a JSON 413; beyond that Tornado
        # itself refuses the request (400) and closes the connection without buffering it.
        max_body_size=2 * gw.max_body_bytes + 65536,
    )
    # Slow-loris clients are cut off: headers (and idle keep-alive) and bodies each have a deadline.
    server.cut_off_slow_clients(gw.header_timeout_seconds, gw.body_timeout_seconds)
    server.max_connections = gw.max_connections
    return server


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall gateway``."""
    res = await open_resources(settings, "gateway", stack, stop, hot_pool_size=INTAKE_WRITERS)
    app = GatewayApp(settings, res.registry, res.engine, res.nc, res.hot_engine)
    server = make_server(app)
    server.listen(settings.gateway.port, settings.gateway.host, reuse_port=settings.gateway.reuse_port)
    log.info("gateway listening on http://%s:%d", settings.gateway.host, settings.gateway.port)
    await stop.wait()
    # Stop intake: report not ready while still serving (load balancers take us out), close the
    # listener, let in-flight requests finish.
    app.accepting = False
    log.info("stopping: not ready; closing the listener in %.1f s", settings.gateway.shutdown_delay_seconds)
    await asyncio.sleep(settings.gateway.shutdown_delay_seconds)
    server.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=10)
    except TimeoutError:
        log.warning("some connections did not close within 10 s")
