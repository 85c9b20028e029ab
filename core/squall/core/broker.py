"""NATS JetStream: connection, and the streams and consumers Squall needs (created or updated at start)."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from squall.core import events
from squall.core.settings import Settings, redact_url

log = logging.getLogger(__name__)


async def connect(settings: Settings, name: str) -> Client:
    """Connect, retrying at start and reconnecting forever afterwards."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    log.info("connecting to NATS at %s", redact_url(settings.nats_url))
    deadline = time.monotonic() + settings.nats.connect_retry_seconds
    delay = 0.2
    while True:
        try:
            return await nats.connect(
                servers=[s.strip() for s in settings.nats_url.split(",")],
                name=name,
                connect_timeout=settings.nats.connect_timeout_seconds,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                # Publishes buffered while reconnecting: bounded, so a dead server cannot eat memory.
                pending_size=8 * 1024 * 1024,
            )
        except (OSError, nats.errors.Error) as exc:
            # The first connection is retried here; once connected, the client reconnects by itself.
            if time.monotonic() + delay > deadline:
                raise
            log.warning("NATS not reachable yet (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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
