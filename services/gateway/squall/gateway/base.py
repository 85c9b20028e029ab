"""What every gateway handler shares: the application's dependencies, metrics by route, body parsing."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.httputil import HTTPServerRequest

from squall.core import metrics
from squall.core.auth import Principal, grants
from squall.core.http import ApiError, JsonHandler
from squall.core.settings import SCOPES, Scope
from squall.gateway import validation

if TYPE_CHECKING:
    from squall.gateway.app import GatewayApp

log = logging.getLogger("squall.gateway")


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


_LEGACY_SCOPES = frozenset(("submit", "read"))


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    """401 with the RFC 6750 challenge (``error`` says why a given token was refused)."""
    challenge = 'Bearer realm="squall"' + (f', error="{error}"' if error else "")
    return ApiError(401, "unauthorized", message, "Authorization", {"WWW-Authenticate": challenge})


async def authorize(
    app: GatewayApp, request: HTTPServerRequest, needed: Scope, legacy_route: bool = False
) -> Principal:
    """The caller, if it may use this route now; else 401 (who?), 403 (not allowed), 429 (too fast)."""
    auth = app.authenticator
    address = request.remote_ip or "unknown"
    header = request.headers.get("Authorization")
    if not auth.settings.required:
        principal = Principal(f"address:{address}", frozenset(SCOPES))
    elif header is None and legacy_route and auth.legacy_trusted(address):
        principal = Principal(f"address:{address}", _LEGACY_SCOPES)
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


def read_json_body(app: GatewayApp, request: HTTPServerRequest) -> Any:
    """A submission's body as JSON, in the order of the checks: media type, size, JSON (its depth is left
    to :func:`read_submission`)."""
    validation.check_json_content_type(request.headers.get("Content-Type"))
    limit = app.squall.gateway.max_body_bytes
    if len(request.body) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes", "body")
    return validation.load_json(request.body)


def read_submission(
    app: GatewayApp, request: HTTPServerRequest, parse: validation.SubmissionParser
) -> validation.Submission:
    """The body as a submission: :func:`read_json_body`, then its fields. A submission's fields nest a few
    levels at most, so the depth is checked only when they are refused (45 % of the CPU of reading a
    100-item body, ``python -m bench.validation``), and a document too deep is still refused as such."""
    gw = app.squall.gateway
    doc = read_json_body(app, request)
    try:
        return parse(doc, app.registry, gw.max_items, gw.max_rid_length)
    except ApiError:
        validation.check_depth(doc)
        raise


class BaseHandler(JsonHandler):
    """Shared behaviour of every gateway route: authentication, rate limits, body parsing."""

    application: GatewayApp
    scope: Scope | dict[str, Scope] | None = "read"
    """The scope a route needs: one for every method, by method, or None for a public route."""
    legacy_route = False  # old clients in SQUALL_AUTH__LEGACY_TRUSTED_NETWORKS may call it without a token
    principal: Principal | None = None

    @property
    def app(self) -> GatewayApp:
        return self.application

    async def prepare(self) -> None:
        needed = self.scope.get(self.request.method or "") if isinstance(self.scope, dict) else self.scope
        if needed is not None:
            self.principal = await self.authorize(needed)

    async def authorize(self, needed: Scope) -> Principal:
        return await authorize(self.app, self.request, needed, self.legacy_route)

    def read_submission(self, parse: validation.SubmissionParser) -> validation.Submission:
        return read_submission(self.app, self.request, parse)
