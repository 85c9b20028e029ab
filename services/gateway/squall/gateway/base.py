"""What every gateway handler shares: the application's dependencies, metrics by route, body parsing."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import tornado.web

from squall.core import metrics
from squall.core.http import ApiError, JsonHandler
from squall.gateway import validation

if TYPE_CHECKING:
    from squall.gateway.app import GatewayApp

log = logging.getLogger("squall.gateway")


def record_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's per-request hook: metrics by route template (never the raw path: it holds ids)."""
    route = getattr(handler, "route", "unmatched")
    method = handler.request.method or "?"
    if method not in _METHODS:
        method = "other"
    metrics.HTTP_REQUESTS.labels(route, method, str(handler.get_status())).inc()
    metrics.HTTP_DURATION.labels(route, method).observe(handler.request.request_time())
    if handler.get_status() >= 500:
        log.warning("%s %s answered %d", method, route, handler.get_status())


_METHODS = frozenset(("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"))


class BaseHandler(JsonHandler):
    """Shared behaviour of every gateway route."""

    application: GatewayApp

    @property
    def app(self) -> GatewayApp:
        return self.application

    def read_submission(self, parse: validation.SubmissionParser) -> validation.Submission:
        """The body as a submission, in the order of the checks: media type, size, JSON, fields."""
        validation.check_json_content_type(self.request.headers.get("Content-Type"))
        gw = self.app.squall.gateway
        if len(self.request.body) > gw.max_body_bytes:
            raise ApiError(
                413, "body_too_large", f"the body is larger than {gw.max_body_bytes} bytes", "body"
            )
        return parse(
            validation.parse_json(self.request.body), self.app.registry, gw.max_items, gw.max_rid_length
        )
