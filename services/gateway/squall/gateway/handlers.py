"""The gateway's handlers of the ``/v1`` API: submissions (the hot path, served without Tornado's
``RequestHandler``), tasks, requests, replays and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from http.client import responses
from typing import Any

import tornado.httputil

from squall.core import events, otel, tracing
from squall.core.http import INTERNAL_ERROR, ApiError, json_bytes, known_failure, log_failure
from squall.core.store import operations, reads
from squall.core.store.intake import Accepted
from squall.core.store.reads import present_rid
from squall.gateway import validation
from squall.gateway.base import (
    BaseHandler,
    Gateway,
    IntakeHandler,
    authorize,
    begin_intake_trace,
    observe_request,
    read_submission,
)
from squall.gateway.openapi import openapi_spec

log = logging.getLogger("squall.gateway")


SUBMIT_ROUTE = "/v1/requests"


class SubmitDelegate(tornado.httputil.HTTPMessageDelegate):
    """``POST /v1/requests``, the hot path, served without Tornado's ``RequestHandler`` (whose per-request
    set-up, output buffering and logging hook cost more CPU than the rest of Tornado's HTTP handling,
    docs/history/benchmarks.md) but with the same checks, answers, trace and metrics as every other route."""

    _answering: set[asyncio.Future[None]] = set()  # strong references: the loop keeps only weak ones

    def __init__(self, app: Gateway, request: tornado.httputil.HTTPServerRequest) -> None:
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
            accepted = await self.app.intake.submit(sub)
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


def submission_answer(sub: validation.Submission, accepted: Accepted) -> dict[str, Any]:
    task_id = str(accepted.task_id)
    return {
        "task_id": task_id,
        "rid": present_rid(sub.rid, sub.rid_is_int),
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


class TasksHandler(BaseHandler):
    """``GET /v1/tasks?state=&kind=&processing=&limit=&cursor=``: tasks, newest first, a page at a time."""

    route = "/v1/tasks"

    async def get(self) -> None:
        query = validation.parse_task_query(
            {k: v[-1].decode(errors="replace") for k, v in self.request.query_arguments.items() if v}
        )
        tasks, following = await reads.list_tasks(
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
            outcome, row = await operations.replay_task(conn, task_id)
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
                await self.app.intake.publish(
                    events.poll_subject(row.processing),
                    replay.model_dump_json().encode(),
                    replay.msg_id,
                    lambda: {"squall.task_id": str(task_id), "squall.processing": row.processing},
                )
        task = await reads.get_task(self.app.engine, task_id)
        self.write_json(task, 202)


class TaskHandler(BaseHandler):
    route = "/v1/tasks/{task_id}"

    async def get(self, raw_id: str) -> None:
        task_id = validation.parse_task_id(raw_id)
        task = await reads.get_task(self.app.engine, task_id) if task_id else None
        if task is None:
            raise ApiError(404, "not_found", "no task with this id", "task_id")
        self.write_json(task)


class RequestStatusHandler(BaseHandler):
    route = "/v1/requests/{rid}"

    async def get(self, rid: str) -> None:  # Tornado has already percent-decoded the path argument
        request = await reads.get_request(self.app.engine, rid)
        if request is None:
            raise ApiError(404, "not_found", "no request with this rid", "rid")
        self.write_json(request)


class OpenApiHandler(BaseHandler):
    route = "/v1/openapi.json"
    scope = None  # public: clients generate code from it

    def get(self) -> None:
        spec = openapi_spec(sorted(self.app.registry), self.app.squall.gateway.max_rid_length)
        self.write_json(spec)
