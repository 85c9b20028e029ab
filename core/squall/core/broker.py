"""NATS JetStream: connection, and the streams and consumers Squall needs (created or updated at start)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, ServiceUnavailableError

from squall.core import events
from squall.core.aio import cancel_and_wait
from squall.core.settings import NatsSettings, Settings
from squall.core.targets import redact_url

log = logging.getLogger(__name__)


def _is_refusal(exc: Exception) -> bool:
    """The server refused the credentials (nats-py reports its -ERR as a plain Error during connect)."""
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and ("authorization violation" in text or "authentication" in text)
    )


class NatsUnavailable(Exception):
    """The first connection failed within the retry window, or the server refused our credentials."""


class StoppedWhileConnecting(Exception):
    """The service was told to stop (SIGTERM) before its first connection succeeded."""


async def connect(settings: Settings, name: str, stop: asyncio.Event | None = None) -> Client:
    """Connect, retrying for ``connect_retry_seconds`` at start and reconnecting forever afterwards.

    nats-py retries a first connection forever when reconnects are unlimited, whatever the error, so the
    window is enforced here; refused credentials end it at once (they will not fix themselves), and so
    does ``stop`` (a service told to stop does not wait out the window).
    """
    nc = Client()
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)
        if _is_refusal(exc) and not nc.is_connected and not refused.done():
            refused.set_result(exc)

    async def on_disconnect() -> None:
        log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    log.info("connecting to NATS at %s", redact_url(settings.nats_url))
    options: dict[str, Any] = {
        "servers": [s.strip() for s in settings.nats_url.split(",")],
        "name": name,
        "connect_timeout": settings.nats.connect_timeout_seconds,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        # nats-py's defaults (a ping every 2 min) would keep a service on a frozen server for minutes.
        "ping_interval": settings.nats.ping_interval_seconds,
        "max_outstanding_pings": settings.nats.max_outstanding_pings,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        # Publishes buffered while reconnecting: bounded, so a dead server cannot eat memory.
        "pending_size": 8 * 1024 * 1024,
        **auth_options(settings.nats),
    }
    connecting: asyncio.Future[Any] = asyncio.ensure_future(nc.connect(**options))
    stopping: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
    window = max(settings.nats.connect_retry_seconds, settings.nats.connect_timeout_seconds)
    try:
        await asyncio.wait(
            {connecting, refused, stopping}, timeout=window, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopping.cancel()
    if connecting.done() and connecting.exception() is None:
        return nc
    await cancel_and_wait([connecting])
    with contextlib.suppress(Exception):
        await nc.close()
    if stop is not None and stop.is_set():
        raise StoppedWhileConnecting("stopped before NATS answered")
    if refused.done():
        raise NatsUnavailable(f"NATS refused the credentials: {refused.result()}")
    if connecting.done() and not connecting.cancelled() and connecting.exception() is not None:
        raise NatsUnavailable(f"cannot connect to NATS: {connecting.exception()}")
    raise NatsUnavailable(f"NATS not reachable within {window:g} s (SQUALL_NATS__CONNECT_RETRY_SECONDS)")


def auth_options(nats_settings: NatsSettings) -> dict[str, Any]:
    """nats-py connect options for the configured credentials and TLS (none by default)."""
    options: dict[str, Any] = {}
    if nats_settings.user is not None:
        options["user"] = nats_settings.user
        if nats_settings.password is not None:
            options["password"] = nats_settings.password.get_secret_value()
    if nats_settings.credentials_file:
        options["user_credentials"] = nats_settings.credentials_file
    if nats_settings.nkey_seed_file:
        options["nkeys_seed"] = nats_settings.nkey_seed_file
    if nats_settings.tls_ca_file or nats_settings.tls_cert_file:
        context = ssl.create_default_context(cafile=nats_settings.tls_ca_file)
        if nats_settings.tls_cert_file and nats_settings.tls_key_file:
            context.load_cert_chain(nats_settings.tls_cert_file, nats_settings.tls_key_file)
        options["tls"] = context
    return options


def stream_configs(settings: Settings) -> list[StreamConfig]:
    common = {
        "retention": RetentionPolicy.WORK_QUEUE,
        "storage": StorageType.FILE,
        "num_replicas": settings.nats.stream_replicas,
        "duplicate_window": settings.nats.duplicate_window_seconds,
        "max_bytes": settings.nats.stream_max_bytes,
        "discard": DiscardPolicy.NEW,
    }
    return [
        StreamConfig(name=events.REQUESTS_STREAM, subjects=[events.REQUEST_SUBMITTED], **common),  # type: ignore[arg-type]
        StreamConfig(name=events.TASKS_STREAM, subjects=[f"{events.POLL_TASK_PREFIX}.>"], **common),  # type: ignore[arg-type]
    ]


def consumer_configs(settings: Settings) -> dict[str, ConsumerConfig]:
    """Durable pull consumers, by stream. Work-queue streams allow one consumer per subject."""
    common = {
        "ack_policy": AckPolicy.EXPLICIT,
        "deliver_policy": DeliverPolicy.ALL,
        "ack_wait": settings.processor.ack_wait_seconds,
        "max_ack_pending": settings.processor.max_ack_pending,
        "max_deliver": -1,
    }
    return {
        events.REQUESTS_STREAM: ConsumerConfig(durable_name=events.REQUESTS_CONSUMER, **common),  # type: ignore[arg-type]
        events.TASKS_STREAM: ConsumerConfig(durable_name=events.TASKS_CONSUMER, **common),  # type: ignore[arg-type]
    }


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create Squall's streams and consumers, or bring them to the configured settings. Idempotent."""
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with another configuration: update what may be updated.
            await js.update_stream(config)
    for stream, consumer in consumer_configs(settings).items():
        await js.add_consumer(stream, consumer)


# No JetStream API answer yet: no meta leader (an election in a cluster, 4 to 9 s), no quorum, a restart.
_JETSTREAM_NOT_READY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)


async def ensure_streams_when_ready(
    js: JetStreamContext, settings: Settings, stop: asyncio.Event | None = None
) -> None:
    """:func:`ensure_streams`, retried while JetStream cannot answer (a cluster electing its meta leader, or
    without a quorum) for up to ``connect_retry_seconds``, as the first connection is; then
    :class:`NatsUnavailable`. ``stop`` ends the wait (:class:`StoppedWhileConnecting`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.nats.connect_retry_seconds
    stopping = stop or asyncio.Event()
    while True:
        try:
            await ensure_streams(js, settings)
            return
        except _JETSTREAM_NOT_READY as exc:
            if loop.time() >= deadline:
                raise NatsUnavailable(
                    f"JetStream did not answer within {settings.nats.connect_retry_seconds:g} s "
                    f"(SQUALL_NATS__CONNECT_RETRY_SECONDS): {exc!r}"
                ) from None
            log.warning("JetStream not ready to create the streams, retrying: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.5)
        if stopping.is_set():
            raise StoppedWhileConnecting("stopped before JetStream answered")


class AckedPublisher:
    """JetStream publishes that wait for the stream's ack, with every ack arriving on one subscription.

    What ``JetStreamContext.publish`` does, for markedly less CPU (``python -m bench.jetstream`` measures
    it): no task and timer per ``asyncio.wait_for``, no ack object, acks decoded by orjson. The intake
    publishes once per request, so this is on its hottest path.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._inbox = nc.new_inbox() + "."
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._subscription: Any = None
        self._subscribing = asyncio.Lock()

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str], wait_seconds: float
    ) -> dict[str, Any]:
        """Publish and return JetStream's ack (``stream``, ``seq``, ``duplicate``); TimeoutError when it is
        not acked within ``wait_seconds``, a nats error when the broker refuses it or no stream takes it."""
        if self._subscription is None:
            await self._subscribe()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        token = str(next(self._tokens))
        acked: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = acked
        try:
            # nats-py swallows the cancellation of a flush that waits on a broker not reading its socket:
            # the ack wait has its own bound, already due if the flush outlived the deadline.
            async with asyncio.timeout_at(deadline):
                await self.nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
            async with asyncio.timeout_at(deadline):
                answer = await acked
        finally:
            self._waiting.pop(token, None)
        try:
            ack: dict[str, Any] = orjson.loads(answer)
        except orjson.JSONDecodeError:  # something else than JetStream answered on this subject
            raise nats.errors.Error(f"not a JetStream ack: {answer[:80]!r}") from None
        if "error" in ack:
            raise APIError.from_error(ack["error"])
        return ack

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if self._subscription is None:
                self._subscription = await self.nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        acked = self._waiting.get(msg.subject[len(self._inbox) :])
        if acked is None or acked.done():
            return  # its publisher gave up waiting
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            acked.set_exception(NoStreamResponseError())  # no stream takes this subject
        else:
            acked.set_result(msg.data)


# The status description that ends a pull request whose next message would exceed its max_bytes.
MAX_BYTES_REACHED = "Message Size Exceeds MaxBytes"


class PullFailed(nats.errors.Error):
    """JetStream refused a pull request (409, e.g. too many waiting) or nothing answered it (503: no such
    consumer)."""


class Puller:
    """Messages of a durable JetStream pull consumer, pulled through one inbox subscription.

    What ``PullSubscription.fetch`` does, for less CPU per message (``python -m bench.jetstream``), without
    its per-message ``asyncio.wait_for`` (a task and a timer for each message of a batch): deliveries are
    appended to a list by the subscription's callback, and a pull request ends when its batch is complete or
    JetStream answers its reply subject with a status (404 none left, 408 expired; 409 refused and 503 no
    consumer raise :class:`PullFailed`). Each request has its own reply
    subject, so the status of an earlier request never ends a later one; a message delivered after its
    request ended is kept for the next fetch. One puller serves one loop: fetches must not overlap.
    """

    # Beyond a pull request's own expiry, how long to wait for its status (lost when the connection drops).
    GRACE_SECONDS = 1.0

    def __init__(self, nc: Client, stream: str, consumer: str, max_bytes: int | None = None) -> None:
        self.nc = nc
        # Bytes a fetch takes at most (JetStream's ``max_bytes``), when its messages vary in size: one
        # message always comes, however large, so a fetch never stalls on it.
        self.max_bytes = max_bytes
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox() + "."
        self._requests = itertools.count()
        self._delivered: list[Msg] = []
        self._current: str | None = None  # reply subject of the pull request in flight
        self._wanted = 0
        self._ended = asyncio.Event()
        self._refusal: str | None = None
        self._subscription: Any = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self._inbox + "*", cb=self._on_message)

    async def stop(self) -> None:
        """Unsubscribe; what was delivered and not fetched is handed back for redelivery at once."""
        leftovers, self._delivered = self._delivered, []
        for msg in leftovers:
            with contextlib.suppress(Exception):
                await msg.nak()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def fetch(self, batch: int, wait_seconds: float) -> list[Msg]:
        """Up to ``batch`` messages: those available now; if none, wait up to ``wait_seconds`` for one and
        take what came with it. TimeoutError when none came."""
        msgs = await self._pull(batch, None)
        if msgs:
            return msgs
        msgs = await self._pull(1, wait_seconds)
        if not msgs:
            raise TimeoutError
        if batch > 1:
            msgs += await self._pull(batch - 1, None)
        return msgs

    async def _pull(self, batch: int, wait_seconds: float | None) -> list[Msg]:
        """One pull request: ``no_wait`` (what is there now) or expiring after ``wait_seconds``."""
        if len(self._delivered) < batch:
            reply = self._inbox + str(next(self._requests))
            self._current, self._wanted, self._refusal = reply, batch, None
            self._ended.clear()
            request: dict[str, Any] = {"batch": batch - len(self._delivered)}
            if wait_seconds is None:
                request["no_wait"] = True
            else:
                request["expires"] = int(wait_seconds * 1e9)
            if self.max_bytes is not None and batch > 1:
                request["max_bytes"] = self.max_bytes
            try:
                await self.nc.publish(self._next, orjson.dumps(request), reply=reply)
                async with asyncio.timeout((wait_seconds or 0.0) + self.GRACE_SECONDS):
                    await self._ended.wait()
            except TimeoutError:
                pass  # its status was lost (a reconnect): take what came
            finally:
                self._current = None
        msgs, self._delivered = self._delivered[:batch], self._delivered[batch:]
        if not msgs and self._refusal is not None:
            raise PullFailed(self._refusal)
        return msgs

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(Header.STATUS)
        if status is None:
            self._delivered.append(msg)
            if len(self._delivered) >= self._wanted:
                self._ended.set()
        elif msg.subject == self._current and status != "100":  # 100: a heartbeat, not an end
            description = headers.get(Header.DESCRIPTION, "")
            # Not "none left", "expired" or the next message over max_bytes: 409 refused, 503 no consumer.
            if status not in ("404", "408") and description != MAX_BYTES_REACHED:
                self._refusal = f"{status} {description}".strip()
            self._ended.set()
