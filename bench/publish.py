"""CPU per JetStream publish awaiting its ack: nats-py's ``JetStreamContext.publish`` against Squall's
``AckedPublisher`` (what the gateway uses), on an embedded NATS server of its own, 127.0.0.1 only.

    python -m bench.publish [--messages 20000] [--in-flight 16] [--rounds 2]

Each round publishes ``--messages`` events of a 1-item request (with the gateway's headers: message id and
traceparent) with ``--in-flight`` publishers at once, first through nats-py, then through AckedPublisher,
and prints this process's CPU time per publish and the publishes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from squall.core.broker import AckedPublisher
from squall.core.embedded import NatsServer

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
    print(f"{label:>15}: {cpu / messages * 1e6:6.1f} µs CPU per publish, {messages / wall:8,.0f} publishes/s")


async def run(messages: int, in_flight: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="squall-bench-publish-") as data:
        server = NatsServer(Path(data) / "nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
            acked = AckedPublisher(nc)

            async def through_nats_py(msg_id: str) -> object:
                headers = {"Nats-Msg-Id": msg_id, "traceparent": TRACEPARENT}
                async with asyncio.timeout(WAIT_SECONDS):  # as the gateway bounded it before
                    return await js.publish("bench.requests", PAYLOAD, timeout=WAIT_SECONDS, headers=headers)

            async def through_acked(msg_id: str) -> object:
                headers = {"Nats-Msg-Id": msg_id, "traceparent": TRACEPARENT}
                return await acked.publish("bench.requests", PAYLOAD, headers, WAIT_SECONDS)

            for round_ in range(rounds):
                await _measure(f"nats-py #{round_ + 1}", through_nats_py, messages, in_flight)
                await _measure(f"acked #{round_ + 1}", through_acked, messages, in_flight)
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.in_flight, args.rounds))


if __name__ == "__main__":
    main()
