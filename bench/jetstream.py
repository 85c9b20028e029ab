"""Client CPU of the two JetStream operations on Squall's hot paths, nats-py's way against Squall's, on an
embedded NATS server of its own, 127.0.0.1 only:

- publishing and awaiting the ack: ``JetStreamContext.publish`` against ``AckedPublisher`` (the gateway);
- pulling from a durable consumer and acking: ``PullSubscription.fetch`` (as the processor used it: one
  message, then the rest with a 5 ms linger) against ``Puller`` (the processor).

    python -m bench.jetstream [--messages 20000] [--in-flight 16] [--batch 64] [--rounds 2]

Each round publishes ``--messages`` events of a 1-item request (with the gateway's headers: message id and
traceparent) with ``--in-flight`` publishers at once, first through nats-py, then through AckedPublisher;
then pulls them all back, ``--batch`` at most per fetch, first through nats-py, then through Puller. It
prints this process's CPU time per message and the messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from squall.cli.embedded import NatsServer
from squall.core.broker import AckedPublisher, Puller

PAYLOAD = (
    b'{"v":1,"task_id":"7c0b9a58-5a7e-4c1c-9a55-2f8e0f1c1d2e","rid":"r","items":[{"number":1,"job":"sum"}]}'
)
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
WAIT_SECONDS = 5.0


async def _measure(
    label: str, publish: Callable[[str], Awaitable[object]], messages: int, in_flight: int
) -> None:
    ids = iter(range(messages))

    async def publisher() -> None:
        for n in ids:
            await publish(f"{label}-{n}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:>22}: {cpu / messages * 1e6:6.1f} µs CPU per publish, {messages / wall:8,.0f} publishes/s")


async def _drain(label: str, fetch: Callable[[int], Awaitable[list[Any]]], messages: int, batch: int) -> None:
    """Pull exactly ``messages`` (each fetch asks for at most what is left), acking each."""
    got = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while got < messages:
        msgs = await fetch(min(batch, messages - got))
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:>22}: {cpu / messages * 1e6:6.1f} µs CPU per message, {messages / wall:8,.0f} messages/s")


async def _nats_py_fetch(sub: JetStreamContext.PullSubscription, batch: int) -> list[Any]:
    """The processor's fetch before Puller: one message, then what else came within 5 ms."""
    msgs = await sub.fetch(1, timeout=WAIT_SECONDS)
    if batch > 1:
        with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
            msgs += await sub.fetch(batch - 1, timeout=0.005)
    return msgs


async def run(messages: int, in_flight: int, batch: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="squall-bench-jetstream-") as data:
        server = NatsServer(Path(data) / "nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
            await js.add_consumer(
                "BENCH",
                ConsumerConfig(durable_name="work", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
            )
            acked = AckedPublisher(nc)
            puller = Puller(nc, "BENCH", "work")
            await puller.start()
            sub = await js.pull_subscribe_bind("work", "BENCH")

            async def through_nats_py(msg_id: str) -> object:
                headers = {"Nats-Msg-Id": msg_id, "traceparent": TRACEPARENT}
                async with asyncio.timeout(WAIT_SECONDS):  # as the gateway bounded it before
                    return await js.publish("bench.requests", PAYLOAD, timeout=WAIT_SECONDS, headers=headers)

            async def through_acked(msg_id: str) -> object:
                headers = {"Nats-Msg-Id": msg_id, "traceparent": TRACEPARENT}
                return await acked.publish("bench.requests", PAYLOAD, headers, WAIT_SECONDS)

            for round_ in range(rounds):
                await _measure(f"publish nats-py #{round_ + 1}", through_nats_py, messages, in_flight)
                await _measure(f"publish acked #{round_ + 1}", through_acked, messages, in_flight)
                # The stream now holds twice --messages: each way pulls half of them.
                await _drain(f"pull nats-py #{round_ + 1}", lambda n: _nats_py_fetch(sub, n), messages, batch)
                await _drain(
                    f"pull Puller #{round_ + 1}", lambda n: puller.fetch(n, WAIT_SECONDS), messages, batch
                )
            await puller.stop()
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.in_flight, args.batch, args.rounds))


if __name__ == "__main__":
    main()
