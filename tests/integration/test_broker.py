"""Streams and consumers are created, or brought to the configured settings, idempotently at start."""

from __future__ import annotations

import nats
from nats.js.api import RetentionPolicy, StorageType

from squall.core import broker, events
from squall.core.settings import Settings
from tests.integration.harness import make_settings


async def test_ensure_streams_is_idempotent_and_updates(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        await broker.ensure_streams(js, settings)
        await broker.ensure_streams(js, settings)  # a second replica starting: no error, no change
        info = await js.stream_info(events.REQUESTS_STREAM)
        assert info.config.storage == StorageType.FILE
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        assert info.config.duplicate_window == settings.nats.duplicate_window_seconds
        assert info.config.num_replicas == settings.nats.stream_replicas
        await js.publish(events.REQUEST_SUBMITTED, b"{}", headers={"Nats-Msg-Id": "kept"})

        changed = make_settings(
            settings.nats_url,
            settings.database_url,
            nats={"duplicate_window_seconds": 30.0},
            processor={"max_ack_pending": 77},
        )
        await broker.ensure_streams(js, changed)
        info = await js.stream_info(events.REQUESTS_STREAM)
        assert info.config.duplicate_window == 30.0
        assert info.state.messages == 1  # updating kept the data
        consumer = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        assert consumer.config.max_ack_pending == 77
        tasks = await js.stream_info(events.TASKS_STREAM)
        assert tasks.config.subjects == [f"{events.POLL_TASK_PREFIX}.>"]
    finally:
        await nc.close()
