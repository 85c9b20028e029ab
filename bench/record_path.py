"""Client CPU of a processor's recording, step by step, per request, for a group of P1 (1 item) and of P2
(100 items) requests of an immediate processing in one shared message: reading the message, computing the
items and laying them out (``compute_items``), encoding the recording statement's document.

    python -m bench.record_path [--requests 10] [--number 300] [--repeat 7]

Each figure is the best of ``--repeat`` rounds of ``--number`` calls, in microseconds per request. No
database: the statement itself is measured by the end-to-end benchmark."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from squall.core import builtin, events
from squall.core.processings import Registry
from squall.processor.new_items import compute_items

TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def shared_message(requests: int, items: int) -> bytes:
    entries = [
        (
            events.request_submitted_json(
                uuid.uuid4(), f"bench-{r}", [{"number": n + 1, "job": "sum"} for n in range(items)]
            ),
            TRACEPARENT,
        )
        for r in range(requests)
    ]
    return events.request_batch_json(entries)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10, help="requests in the message")
    parser.add_argument("--number", type=int, default=300, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (the best is kept)")
    args = parser.parse_args()
    registry = Registry(
        [dataclasses.replace(p, mode="immediate") if p.name == "sum" else p for p in builtin.PROCESSINGS]
    )
    chunk_sizes = {p.name: p.batch_size for p in registry.values() if p.mode == "batch" and p.claim == "lock"}
    loop = asyncio.new_event_loop()
    try:
        for profile, items in (("P1", 1), ("P2", 100)):
            data = shared_message(args.requests, items)
            requests = [event for event, _ in events.read_request_events(data)]
            laid_out, _ = loop.run_until_complete(compute_items(registry, chunk_sizes, requests))

            def lay_out(requests: list[events.RequestEvent] = requests) -> Any:
                return loop.run_until_complete(compute_items(registry, chunk_sizes, requests))

            steps: dict[str, Callable[[], Any]] = {
                "read": functools.partial(events.read_request_events, data),
                "compute and lay out": lay_out,
                "encode": laid_out.as_json,
            }
            micros = {
                name: min(timeit.repeat(step, number=args.number, repeat=args.repeat))
                / args.number
                / args.requests
                * 1e6
                for name, step in steps.items()
            }
            print(
                f"{profile} ({items} item(s) per request, {args.requests} per message): "
                + ", ".join(f"{name} {us:.2f} us" for name, us in micros.items())
                + " per request"
            )
    finally:
        loop.close()


if __name__ == "__main__":
    main()
