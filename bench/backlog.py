"""Memory under a large backlog: does every service's RSS stay flat while items pile up and drain?

``python -m bench.backlog [--items 1000000]`` starts ``squall dev`` (batch mode, 2 processors), pauses the
``sum`` processing, submits the items in requests of 100 through the HTTP API, waits until every request
is recorded (the backlog is then in PostgreSQL), resumes the processing and waits until everything is
processed — sampling each service's RSS every 0.5 s, per phase. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.dev import SquallDev
from bench.procs import free_port
from bench.sampler import RssSampler

ITEMS_PER_REQUEST = 100
CLIENTS = 16


async def _submit_all(base_url: str, requests: int) -> float:
    started = time.monotonic()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as http:
            while not queue.empty():
                index = queue.get_nowait()
                body = {
                    "rid": f"backlog-{index}",
                    "items": [{"number": index * 100 + i, "job": "sum"} for i in range(ITEMS_PER_REQUEST)],
                }
                while True:
                    if (await http.post("/v1/requests", json=body)).status_code in (200, 202):
                        break
                    await asyncio.sleep(0.2)  # 503 under pressure: the same rid again

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return time.monotonic() - started


async def _wait_stats(base_url: str, done: Any, limit_seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit_seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        while True:
            stats: dict[str, Any] = (await http.get("/v1/stats")).json()
            if done(stats) or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(1.0)


async def _phase(dev: SquallDev, work: Any) -> tuple[Any, dict[str, float]]:
    """Run ``work`` while sampling RSS; the result and the peak RSS per service in MB."""
    sampler = RssSampler(dev)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    try:
        result = await work
    finally:
        stop.set()
        await sampling
    return result, {k: round(v / 1024, 1) for k, v in sorted(sampler.peak_kb.items())}


async def main(items: int, limit_seconds: float) -> dict[str, Any]:
    requests = items // ITEMS_PER_REQUEST
    data = Path(tempfile.mkdtemp(prefix="squall-backlog-"))
    env = {"SQUALL_PROCESSINGS__SUM__MODE": "batch", "SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS": "0.2"}
    dev = SquallDev(free_port(), 2, data / "dev", env, data / "dev.log")
    dev.start()
    try:
        dev.wait_ready(120)
        async with httpx.AsyncClient(base_url=dev.base_url, timeout=10.0) as http:
            answer = await http.patch("/v1/processings/sum", json={"paused": True})
            answer.raise_for_status()
        _, idle_rss = await _phase(dev, asyncio.sleep(3))
        submit_seconds, intake_rss = await _phase(dev, _submit_all(dev.base_url, requests))
        recorded, record_rss = await _phase(
            dev,
            _wait_stats(dev.base_url, lambda s: s["requests"]["recorded"] >= requests, limit_seconds),
        )
        _, hold_rss = await _phase(dev, asyncio.sleep(10))  # the whole backlog waiting
        async with httpx.AsyncClient(base_url=dev.base_url, timeout=10.0) as http:
            (await http.patch("/v1/processings/sum", json={"paused": False})).raise_for_status()
        drain_started = time.monotonic()
        final, drain_rss = await _phase(
            dev,
            _wait_stats(dev.base_url, lambda s: s["requests"]["processed"] >= requests, limit_seconds),
        )
        return {
            "items": requests * ITEMS_PER_REQUEST,
            "requests": requests,
            "submit_seconds": round(submit_seconds, 1),
            "backlog_at_pause": recorded["items"].get("sum", {}),
            "drain_seconds": round(time.monotonic() - drain_started, 1),
            "final": final,
            "peak_rss_mb": {
                "idle": idle_rss,
                "intake": intake_rss,
                "recording": record_rss,
                "backlog_held": hold_rss,
                "drain": drain_rss,
            },
        }
    finally:
        dev.stop()
        dev.remove_data()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=1_000_000, help="items in the backlog (default 1e6)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds (default 900)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.items, args.timeout)), indent=2))


if __name__ == "__main__":
    cli()
