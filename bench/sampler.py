"""Peak resident memory of each Squall service, sampled from the pids squall dev lists in dev.json, and the
CPU time each one used under load."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from bench import procs
from bench.dev import SquallDev

SAMPLE_INTERVAL_SECONDS = 0.5


class RssSampler:
    """Samples every 0.5 s; keeps the peak RSS per service kind (max over its processes) and per name.

    ``postgres`` is the postmaster alone (the pid in dev.json). ``postgres_with_backends`` adds the RSS of
    its child processes (backends, WAL writer, ...) at the same instant: an over-estimate, since shared
    buffers are counted once per process that touched them, but a better picture of the database's cost.
    """

    def __init__(self, dev: SquallDev) -> None:
        self.dev = dev
        self.peak_kb: dict[str, int] = {}
        self.peak_kb_by_name: dict[str, int] = {}
        self.samples = 0
        self.pids_by_name: dict[str, set[int]] = {}

    def _keep(self, service: str, name: str, kb: int) -> None:
        self.peak_kb[service] = max(self.peak_kb.get(service, 0), kb)
        self.peak_kb_by_name[name] = max(self.peak_kb_by_name.get(name, 0), kb)

    def sample(self) -> None:
        self.samples += 1
        processes: list[dict[str, Any]] = list(self.dev.state())
        if self.dev.popen is not None:
            processes.append({"service": "supervisor", "name": "supervisor", "pid": self.dev.popen.pid})
        for entry in processes:
            pid = entry["pid"]
            service = str(entry["service"])
            name = str(entry.get("name", service))
            self.pids_by_name.setdefault(name, set()).add(pid)
            kb = procs.rss_kb(pid)
            if kb is None:
                continue
            self._keep(service, name, kb)
            if service == "postgres":
                total = kb + sum(procs.rss_kb(child) or 0 for child in procs.children(pid))
                self._keep("postgres_with_backends", "postgres_with_backends", total)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL_SECONDS)
            except TimeoutError:
                pass

    def restarts(self) -> dict[str, int]:
        """Children that got a new pid while sampled (squall dev restarted them): name -> restarts."""
        return {name: len(pids) - 1 for name, pids in self.pids_by_name.items() if len(pids) > 1}

    def result(self) -> dict[str, Any]:
        return {
            "source": procs.RSS_SOURCE,
            "samples": self.samples,
            "interval_seconds": SAMPLE_INTERVAL_SECONDS,
            "peak_mb": {k: round(v / 1024, 1) for k, v in sorted(self.peak_kb.items())},
            "peak_mb_by_process": {k: round(v / 1024, 1) for k, v in sorted(self.peak_kb_by_name.items())},
            "restarts": self.restarts(),
        }


class CpuMeter:
    """CPU time per service kind over the load window: ``start()`` and ``stop()`` read /proc around k6.

    ``postgres`` is the postmaster with its child processes (backends, WAL writer, ...); a backend that exits
    inside the window takes its CPU time with it, so that figure is a floor. ``k6`` is read from this
    process's reaped children (k6 is the only child reaped inside the window) and ``bench`` is this process
    (its /v1/stats polling). Divided by the accepted requests, it says what a request costs each component.
    """

    def __init__(self, dev: SquallDev) -> None:
        self.dev = dev
        self._started: tuple[float, dict[str, float]] | None = None
        self._ended: tuple[float, dict[str, float]] | None = None

    def _snapshot(self) -> tuple[float, dict[str, float]]:
        used: dict[str, float] = {}
        for entry in self.dev.state():
            pid = entry["pid"]
            pids = [pid, *procs.children(pid)] if entry["service"] == "postgres" else [pid]
            seconds = sum(procs.cpu_seconds(p) or 0.0 for p in pids)
            used[str(entry["service"])] = used.get(str(entry["service"]), 0.0) + seconds
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        used["bench"] = own.ru_utime + own.ru_stime
        used["k6"] = reaped.ru_utime + reaped.ru_stime
        return time.monotonic(), used

    def start(self) -> None:
        self._started = self._snapshot()

    def stop(self) -> None:
        self._ended = self._snapshot()

    def result(self, requests: int) -> dict[str, Any] | None:
        if self._started is None or self._ended is None:
            return None
        (t0, before), (t1, after) = self._started, self._ended
        seconds = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
        seconds["total"] = round(sum(seconds.values()), 2)
        window = t1 - t0
        return {
            "source": "/proc/PID/stat utime+stime; getrusage for k6 and bench",
            "window_seconds": round(window, 2),
            "cpu_seconds": seconds,
            "cores_busy": {k: round(v / window, 2) for k, v in seconds.items()} if window > 0 else None,
            "us_per_request": {k: round(v * 1e6 / requests) for k, v in seconds.items()}
            if requests
            else None,
        }
