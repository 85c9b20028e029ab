"""Peak resident memory of each Squall service, sampled from the pids squall dev lists in dev.json."""

from __future__ import annotations

import asyncio
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
