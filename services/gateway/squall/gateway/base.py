"""What every gateway handler shares: the application's dependencies, metrics by route, body parsing."""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol, cast

import tornado.web
from sqlalchemy.ext.asyncio import AsyncEngine
from tornado.httputil import HTTPServerRequest

from squall.core import metrics, otel, tracing
from squall.core.http import ApiError, JsonHandler
from squall.core.processings import Registry
from squall.core.rules import LEGACY_SCOPES, SCOPES, Scope
from squall.core.settings import Settings
from squall.gateway import validation
from squall.gateway.auth import Authenticator, Principal, grants
from squall.gateway.intake import Intake

log = logging.getLogger("squall.gateway")


class Gateway(Protocol):
    """What a handler needs of the gateway's application (``app.GatewayApp`` provides it)."""

    squall: Settings
    registry: Registry
    engine: AsyncEngine
    authenticator: Authenticator
    intake: Intake


def record_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's per-request hook: metrics by route template (never the raw path: it holds ids)."""
    observe_request(
        getattr(handler, "route", "unmatched"),
        handler.request.method,
        handler.get_status(),
        handler.request.request_time(),
    )


def observe_request(route: str, method: str | None, status: int, seconds: float) -> None:
    """Count an answered request and its duration (every route, whichever way it was served)."""
    if method not in _METHODS:
        method = "other"
    metrics.child(metrics.HTTP_REQUESTS, route, method, str(status)).inc()
    metrics.child(metrics.HTTP_DURATION, route, method).observe(seconds)
    if status >= 500:
        log.warning("%s %s answered %d", method, route, status)


_METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"))


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    """401 with the RFC 6750 challenge (``error`` says why a given token was refused)."""
    challenge = 'Bearer realm="squall"' + (f', error="{error}"' if error else "")
    return ApiError(401, "unauthorized", message, "Authorization", {"WWW-Authenticate": challenge})


async def authorize(
    app: Gateway, request: HTTPServerRequest, needed: Scope, legacy_route: bool = False
) -> Principal:
    """The caller, if it may use this route now; else 401 (who?), 403 (not allowed), 429 (too fast)."""
    auth = app.authenticator
    address = request.remote_ip or "unknown"
    header = request.headers.get("Authorization")
    if not auth.settings.required:
        principal = Principal(f"address:{address}", frozenset(SCOPES))
    elif header is None and legacy_route and auth.legacy_trusted(address):
        principal = Principal(f"address:{address}", LEGACY_SCOPES)
    elif header is None:
        raise _unauthorized("this route needs a bearer token: Authorization: Bearer <token>")
    else:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be: Bearer <token>", "invalid_request")
        found = await auth.principal(token.strip())
        if found is None:
            raise _unauthorized("unknown or revoked token", "invalid_token")
        principal = found
    if not grants(principal.scopes, needed):
        raise ApiError(403, "forbidden", f"this route needs a token with the {needed} scope", "Authorization")
    wait = auth.retry_after(principal)
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests for this client; retry later",
            None,
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return principal


def read_json_body(app: Gateway, request: HTTPServerRequest) -> Any:
    """A submission's body as JSON, in the order of the checks: media type, size, JSON (its depth is left
    to :func:`read_submission`)."""
    validation.check_json_content_type(request.headers.get("Content-Type"))
    check_body_size(app, request)
    return validation.load_json(request.body)


def check_body_size(app: Gateway, request: HTTPServerRequest) -> None:
    """413 for a body over ``SQUALL_GATEWAY__MAX_BODY_BYTES``."""
    limit = app.squall.gateway.max_body_bytes
    if len(request.body) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes", "body")


def read_submission(
    app: Gateway, request: HTTPServerRequest, parse: validation.SubmissionParser
) -> validation.Submission:
    """The body as a submission: :func:`read_json_body`, then its fields. A submission's fields nest a few
    levels at most, so the depth is checked only when they are refused (it was a large share of the CPU of
    reading a body, ``python -m bench.validation``), and a document too deep is still refused as such."""
    gw = app.squall.gateway
    doc = read_json_body(app, request)
    try:
        return parse(doc, app.registry, gw.max_items, gw.max_rid_length)
    except ApiError:
        validation.check_depth(doc)
        raise


class BaseHandler(JsonHandler):
    """Shared behaviour of every gateway route: authentication, rate limits, body parsing."""

    scope: Scope | dict[str, Scope] | None = "read"
    """The scope a route needs: one for every method, by method, or None for a public route."""
    legacy_route = False  # old clients in SQUALL_AUTH__LEGACY_TRUSTED_NETWORKS may call it without a token
    principal: Principal | None = None

    @property
    def app(self) -> Gateway:
        return cast(Gateway, self.application)

    async def prepare(self) -> None:
        needed = self.scope.get(self.request.method or "") if isinstance(self.scope, dict) else self.scope
        if needed is not None:
            self.principal = await self.authorize(needed)

    async def authorize(self, needed: Scope) -> Principal:
        return await authorize(self.app, self.request, needed, self.legacy_route)

    def read_submission(self, parse: validation.SubmissionParser) -> validation.Submission:
        return read_submission(self.app, self.request, parse)


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
