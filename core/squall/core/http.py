"""Tornado pieces shared by every service: JSON errors, health, readiness and metrics endpoints."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import asyncpg.exceptions
import orjson
import sqlalchemy.exc
import tornado.httpserver
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from squall.core.logs import error_text
from squall.core.rules import RETRY_AFTER_UNAVAILABLE_SECONDS, ErrorCode

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[list[str]]]
"""Answers the problems that make a service not ready; an empty list means ready."""


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "field"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # orjson stops at 64-bit integers; a processing's result may be larger.
        return json.dumps(value, default=str, separators=(",", ":")).encode()


# asyncpg's own errors, from the statements run on its connection (store.driver.fetch_on_driver): the
# connection
# lost or refused (SQLSTATE 08), the server shutting down or cancelling (57), out of resources (53), the
# client's connection errors, and its protocol's state broken by a connection the server ended between
# statements ("cannot switch to state 12; another operation (2) is in progress", seen after
# pg_terminate_backend; the connection is invalidated all the same).
_DRIVER_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError
    | asyncpg.exceptions.OperatorInterventionError
    | asyncpg.exceptions.InsufficientResourcesError
    | asyncpg.exceptions.InterfaceError
    | asyncpg.exceptions.InternalClientError
)


def is_unavailable(exc: BaseException) -> bool:
    """A database or network failure (not a bug): the answer is 503 with Retry-After, not 500."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError | _DRIVER_UNAVAILABLE):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return (
            exc.connection_invalidated
            or isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)
            or isinstance(exc.orig, OSError)
            or "connection" in type(exc.orig).__name__.lower()
        )
    return isinstance(exc, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError)


def known_failure(exc: BaseException) -> ApiError | None:
    """The answer a failure gets when it is not a bug: its own (ApiError), or 503 with Retry-After for an
    unreachable dependency; None for anything else (answered 500, logged with its traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if is_unavailable(exc):
        return ApiError(
            503,
            "unavailable",
            "a dependency is unreachable; retry later",
            None,
            {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SECONDS)},
        )
    return None


INTERNAL_ERROR = ApiError(500, "internal", "internal error")


def log_failure(method: str | None, route: str, exc: BaseException) -> None:
    """Log a failure that ended a request: nothing for an answered ApiError, a line for an unreachable
    dependency, the traceback for a bug."""
    if isinstance(exc, ApiError):
        return
    if is_unavailable(exc):
        log.warning("%s %s: dependency unavailable: %s", method, route, error_text(exc))
        return
    log.error("unhandled error in %s %s", method, route, exc_info=exc)


class JsonHandler(tornado.web.RequestHandler):
    """Every answer is JSON, errors included; no HTML page, stack trace or internal detail leaks out."""

    route = "unmatched"  # the route template, for metrics and logs (never the raw path)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.clear_header("Server")

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The methods this route serves (the ``Allow`` header of a 405): those the handler implements."""
        return [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if _implements(cls, m)]

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json_bytes(value))

    def fail(self, error: ApiError) -> None:
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.write_json(error.body(), error.status)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, tornado.web.HTTPError):
            log_failure(self.request.method, self.route, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None:
            exc = known_failure(exc)
        if isinstance(exc, ApiError):
            self.clear()
            self.set_default_headers()
            for name, value in exc.headers.items():
                self.set_header(name, value)
            self.set_status(exc.status)
            self.finish(json_bytes(exc.body()))
            return
        code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "error")
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if status_code >= 500:
            code, message = "internal", "internal error"
        else:
            message = (
                HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "error"
            )
        self.set_header("Content-Type", "application/json")
        self.finish(json_bytes({"error": {"code": code, "message": message, "field": None}}))


def _implements(handler: type[tornado.web.RequestHandler], method: str) -> bool:
    return getattr(handler, method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise ApiError(404, "not_found", "no such route")


class HealthHandler(JsonHandler):
    """``/healthz`` (liveness): the event loop answers and nothing in the process is stuck. Unlike
    ``/readyz`` it ignores NATS and PostgreSQL: a restart would not bring them back."""

    route = "/healthz"

    def initialize(self, alive: ReadyCheck | None = None) -> None:
        self.alive = alive

    async def get(self) -> None:
        problems = await self.alive() if self.alive is not None else []
        if problems:
            self.write_json({"status": "stuck", "problems": problems}, 503)
        else:
            self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    """``/readyz``: the dependencies this service needs are reachable."""

    route = "/readyz"

    def initialize(self, check: ReadyCheck) -> None:
        self.check = check

    async def get(self) -> None:
        problems = await self.check()
        if problems:
            self.write_json({"status": "unavailable", "problems": problems}, 503)
        else:
            self.write_json({"status": "ready"})


class MetricsHandler(JsonHandler):
    route = "/metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())


def ops_routes(
    check: ReadyCheck, alive: ReadyCheck | None = None
) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    return [
        ("/healthz", HealthHandler, {"alive": alive}),
        ("/readyz", ReadyHandler, {"check": check}),
        ("/metrics", MetricsHandler, {}),
    ]


def start_ops_server(
    port: int, check: ReadyCheck, host: str = "0.0.0.0", alive: ReadyCheck | None = None
) -> tornado.httpserver.HTTPServer:
    """The small HTTP server of a processor or scheduler: /healthz, /readyz, /metrics."""
    app = tornado.web.Application(
        ops_routes(check, alive),
        default_handler_class=NotFoundHandler,
    )
    server = tornado.httpserver.HTTPServer(app)
    server.listen(port, host)
    return server
