"""Streams and consumers are created, or brought to the configured settings, idempotently at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType
from nats.js.errors import APIError, NoStreamResponseError

from squall.core import broker, events
from squall.core.settings import Settings
from tests.integration.harness import make_settings, wait_for


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_ensure_streams_is_idempotent_and_updates(nc: Client, settings: Settings) -> None:
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


async def test_acked_publisher_returns_jetstreams_acks_and_its_refusals(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ACKS", subjects=["acks.>"], max_msgs=3, discard=DiscardPolicy.NEW)
    publisher = broker.AckedPublisher(nc)
    first, again, other = await asyncio.gather(
        publisher.publish("acks.a", b"1", {"Nats-Msg-Id": "one"}, 5),
        publisher.publish("acks.a", b"1", {"Nats-Msg-Id": "one"}, 5),
        publisher.publish("acks.b", b"2", {"Nats-Msg-Id": "two"}, 5),
    )
    assert first["stream"] == "ACKS" and {first["seq"], other["seq"]} == {1, 2}
    assert again.get("duplicate") is True or first.get("duplicate") is True  # one of them was stored
    assert (await js.stream_info("ACKS")).state.messages == 2
    await publisher.publish("acks.c", b"3", {"Nats-Msg-Id": "three"}, 5)
    with pytest.raises(APIError):  # the stream is full and discards new messages: its error ack
        await publisher.publish("acks.d", b"4", {"Nats-Msg-Id": "four"}, 5)
    with pytest.raises(NoStreamResponseError):  # no stream takes the subject: NATS's no-responders
        await publisher.publish("nowhere.x", b"5", {}, 5)
    assert publisher._waiting == {}  # nothing left waiting after answers and refusals


async def test_acked_publisher_gives_up_at_its_deadline(nc: Client) -> None:
    """A subject someone answers with silence (a plain subscriber that never replies): TimeoutError in
    time, and the wait is forgotten."""
    await nc.subscribe("silent.x", cb=_ignore)
    publisher = broker.AckedPublisher(nc)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await publisher.publish("silent.x", b"?", {}, 0.3)
    assert 0.25 < asyncio.get_running_loop().time() - started < 2
    assert publisher._waiting == {}


async def _ignore(msg: Msg) -> None:
    return None


async def _work_queue(nc: Client, name: str, messages: int = 0) -> broker.Puller:
    """A stream ``name`` holding ``messages`` numbered messages, its consumer ``work`` (30 s ack wait), and
    a started puller of it."""
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    await js.add_consumer(
        name, ConsumerConfig(durable_name="work", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    for n in range(messages):
        await js.publish(f"{name.lower()}.x", str(n).encode())
    puller = broker.Puller(nc, name, "work")
    await puller.start()
    return puller


async def test_puller_takes_what_is_there_then_waits_for_more(nc: Client) -> None:
    js = nc.jetstream()
    puller = await _work_queue(nc, "PULLS", messages=5)
    first = await puller.fetch(3, 1.0)
    assert [m.data for m in first] == [b"0", b"1", b"2"]  # a batch never exceeds its size
    second = await puller.fetch(3, 1.0)
    assert [m.data for m in second] == [b"3", b"4"]  # what is left, at once: no waiting to fill
    for msg in first + second:
        await msg.ack()

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):  # nothing comes: the wait is bounded
        await puller.fetch(3, 0.3)
    assert 0.25 < loop.time() - started < 2.5

    later = asyncio.create_task(puller.fetch(3, 5.0))

    async def pull_waiting() -> bool:  # the fetch's pull request waits at the server for a message
        return (await js.consumer_info("PULLS", "work")).num_waiting == 1

    await wait_for(pull_waiting, timeout=5, what="the fetch waiting")
    await js.publish("pulls.x", b"late")
    assert [m.data for m in await asyncio.wait_for(later, 5)] == [b"late"]  # delivered as it arrives
    assert (await js.consumer_info("PULLS", "work")).num_ack_pending == 1
    await puller.stop()


async def test_a_puller_with_max_bytes_takes_that_much_and_a_larger_message_alone(nc: Client) -> None:
    """A fetch stops before the message that would take it past ``max_bytes``; a message larger than that
    still comes, alone, so a fetch never stalls on it."""
    js = nc.jetstream()
    await _work_queue(nc, "BYTES")
    for size in (100_000, 100_000, 100_000, 400_000, 100_000):
        await js.publish("bytes.x", b"x" * size)
    puller = broker.Puller(nc, "BYTES", "work", max_bytes=250_000)
    await puller.start()
    fetched = [[len(m.data) for m in await puller.fetch(10, 1.0)] for _ in range(3)]
    # The large one comes by the one-message pull that follows an empty fetch, the rest after it.
    assert fetched == [[100_000, 100_000], [100_000], [400_000, 100_000]]
    with pytest.raises(TimeoutError):  # nothing left
        await puller.fetch(10, 0.3)
    await puller.stop()


async def test_a_stopped_puller_hands_back_what_it_holds(nc: Client) -> None:
    holder = await _work_queue(nc, "HANDBACK", messages=4)
    held = await holder.fetch(2, 1.0)
    # Deliveries the loop has not fetched yet (as when one arrives after its pull request ended):
    holder._delivered = held
    await holder.stop()
    other = broker.Puller(nc, "HANDBACK", "work")
    await other.start()
    loop = asyncio.get_running_loop()
    started, again = loop.time(), list[Msg]()
    while len(again) < 4 and loop.time() - started < 10:
        with contextlib.suppress(TimeoutError):
            again += await other.fetch(10, 1.0)
    # Redelivered at once (JetStream takes a nak asynchronously), not after the 30 s ack wait.
    assert sorted(m.data for m in again) == [b"0", b"1", b"2", b"3"]
    assert loop.time() - started < 10
    await other.stop()


async def test_a_pull_from_a_missing_consumer_fails_instead_of_spinning(nc: Client) -> None:
    puller = await _work_queue(nc, "GONE")
    await nc.jetstream().delete_consumer("GONE", "work")
    with pytest.raises(broker.PullFailed):
        await puller.fetch(5, 1.0)
    await puller.stop()
