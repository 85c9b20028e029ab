"""The gateway's HTTP server: Tornado's, with a cap on open connections (more are answered 503 and
closed) and one deadline per connection for clients too slow with a request's headers or body."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.iostream
import tornado.web

from squall.core import metrics
from squall.core.http import json_bytes
from squall.core.rules import RETRY_AFTER_UNAVAILABLE_SECONDS
from squall.core.settings import GatewaySettings

log = logging.getLogger("squall.gateway")

_OVER_CAPACITY_BODY = json_bytes(
    {"error": {"code": "too_many_connections", "message": "too many open connections", "field": None}}
)
_OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (RETRY_AFTER_UNAVAILABLE_SECONDS, len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY)
)


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """Refuses connections beyond ``max_connections`` (503, closed) so a flood cannot exhaust the gateway,
    and cuts off clients too slow with a request's headers (or idle between requests) or its body.

    The deadlines are kept here rather than by Tornado, which races every header and body read against a
    timer of its own (``gen.with_timeout``: a task and a timer per read, a measurable share of the
    gateway's CPU per request, ``python -m bench.deadlines``): each connection has one deadline, moved on
    as its requests begin and their headers arrive, and a sweep every :data:`SWEEP_SECONDS` closes the
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


def make_server(app: tornado.web.Application, gw: GatewaySettings) -> CappedHTTPServer:
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
