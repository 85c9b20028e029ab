"""The gateway: Squall's HTTP API (Tornado). Wires the application together and runs it.

A submission travels handler (``handlers.SubmitDelegate``, or ``legacy.LegacyHandler``) → validation
(``validation``) → intake (``intake.Intake``: admission, the acceptance in PostgreSQL, the event to
JetStream) → store (``squall.core.store.intake``). Reads go handler → ``squall.core.store.reads``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import tornado.httputil
import tornado.web

from squall.core.http import NotFoundHandler, ops_routes
from squall.core.lifecycle import Resources, open_resources
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings
from squall.gateway import admin, stats
from squall.gateway.auth import Authenticator
from squall.gateway.base import record_request
from squall.gateway.handlers import (
    SUBMIT_ROUTE,
    OpenApiHandler,
    RequestStatusHandler,
    SubmitDelegate,
    SubmitOtherMethods,
    TaskHandler,
    TaskRetryHandler,
    TasksHandler,
)
from squall.gateway.intake import INTAKE_WRITERS, Intake
from squall.gateway.legacy import LegacyHandler
from squall.gateway.server import make_server

log = logging.getLogger("squall.gateway")


class GatewayApp(tornado.web.Application):
    """The Tornado application, with its dependencies injected (what ``base.Gateway`` names)."""

    def __init__(self, settings: Settings, res: Resources) -> None:
        self.squall = settings
        self.registry = res.registry
        self.engine = engine = res.engine
        self.nc = res.nc
        self.accepting = True
        self.authenticator = Authenticator(settings.auth, engine)
        self.stats = stats.StatsCache(engine)
        self.intake = Intake(
            settings.gateway, engine, res.hot_engine or engine, res.nc, self.stats.backlog_items
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

    async def problems(self) -> list[str]:
        found = await dependency_problems(self.nc, self.engine)
        if not self.accepting:
            found.append("shutting down")
        return found


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall gateway``."""
    res = await open_resources(settings, "gateway", stack, stop, hot_pool_size=INTAKE_WRITERS)
    app = GatewayApp(settings, res)
    server = make_server(app, settings.gateway)
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
