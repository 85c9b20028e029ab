"""Follow a run through the gateway's ``GET /v1/stats``: sampled during the load, then polled until every
accepted request is processed and no item is pending (the moment "everything is persisted").

``/v1/stats`` is cached by the gateway for up to a second, so the moment it reports the drain is up to a
second late; the exact figures (throughput, end-to-end latency, drain time) come from PostgreSQL's
timestamps afterwards (bench/db.py)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from typing import Any

from bench.dev import HTTP_OPENER

SAMPLE_INTERVAL_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 5.0


def read_stats(base_url: str) -> dict[str, Any]:
    with HTTP_OPENER.open(f"{base_url}/v1/stats", timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return dict(json.loads(response.read()))


def summarise(stats: dict[str, Any]) -> dict[str, int]:
    """The totals of one answer: requests accepted/processed, items pending/done/failed over processings."""
    items = stats.get("items", {}).values()
    return {
        "accepted": int(stats["requests"]["accepted"]),
        "processed": int(stats["requests"]["processed"]),
        "items_pending": sum(int(c.get("pending", 0)) for c in items),
        "items_done": sum(int(c.get("done", 0)) for c in items),
        "items_failed": sum(int(c.get("failed", 0)) for c in items),
    }


def drained(totals: dict[str, int], at_least: int) -> bool:
    return (
        totals["accepted"] >= at_least
        and totals["processed"] == totals["accepted"]
        and totals["items_pending"] == 0
    )


async def poll_until_drained(base_url: str, at_least: int, within: float) -> tuple[dict[str, int], bool]:
    """Read /v1/stats every half second until it shows the drain or ``within`` seconds have passed: the last
    totals, and whether they show it."""
    deadline = time.monotonic() + within
    while True:
        totals = summarise(await asyncio.to_thread(read_stats, base_url))
        done = drained(totals, at_least)
        if done or time.monotonic() > deadline:
            return totals, done
        await asyncio.sleep(SAMPLE_INTERVAL_SECONDS)


class StatsWatcher:
    """Samples /v1/stats every 0.5 s from ``run()`` until ``stop()``; ``wait_drained()`` reads the samples."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.started = time.monotonic()
        self.samples: list[dict[str, Any]] = []  # {"t": seconds since the watcher started, **totals}
        self.errors = 0
        self.last_error: str | None = None
        self._stop = asyncio.Event()
        self._new_sample = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = await asyncio.to_thread(read_stats, self.base_url)
            except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                t = round(time.monotonic() - self.started, 3)
                self.samples.append({"t": t, **summarise(stats)})
                self._new_sample.set()
            try:
                await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL_SECONDS)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    def mark(self) -> float:
        """Seconds since the watcher started (to place events such as the end of k6 on its time axis)."""
        return round(time.monotonic() - self.started, 3)

    async def wait_drained(self, at_least: int, within: float) -> dict[str, Any]:
        """Wait for a sample with everything accepted (at least ``at_least``) processed, nothing pending."""
        started = time.monotonic()
        while True:
            latest = self.samples[-1] if self.samples else None
            done = latest is not None and drained(latest, at_least)
            elapsed = time.monotonic() - started
            if done or elapsed >= within:
                return {
                    "drained": done,
                    "source": "GET /v1/stats",
                    "wait_seconds": round(elapsed, 3),
                    "last": latest,
                    "stats_errors": self.errors,
                    "last_stats_error": self.last_error,
                }
            self._new_sample.clear()
            try:
                await asyncio.wait_for(self._new_sample.wait(), max(0.1, within - elapsed))
            except TimeoutError:
                pass
