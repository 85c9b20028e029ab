"""The benchmark's CPU accounting (bench.sampler.CpuMeter) on this process, with no system running."""

from __future__ import annotations

import os
from typing import Any

from bench import procs
from bench.report import cpu_table, speed_probe_ms
from bench.sampler import CpuMeter


class _OneProcess:
    """Stands in for squall dev: its process table lists this test process as the gateway."""

    def state(self) -> list[dict[str, Any]]:
        return [{"service": "gateway", "pid": os.getpid()}]


def _burn(seconds: float = 0.05) -> None:
    """Use at least this much CPU time (the kernel counts it in 10 ms ticks)."""
    start = procs.cpu_seconds(os.getpid()) or 0.0
    while (procs.cpu_seconds(os.getpid()) or 0.0) - start < seconds:
        sum(i * i for i in range(10_000))


def test_the_cpu_a_component_used_is_divided_by_the_requests() -> None:
    meter = CpuMeter(_OneProcess())  # type: ignore[arg-type]
    meter.start()
    _burn()
    meter.stop()
    result = meter.result(requests=1000)
    assert result is not None
    used = result["cpu_seconds"]["gateway"]
    assert used > 0
    assert result["us_per_request"]["gateway"] == round(used * 1e6 / 1000)
    # This process is both the "gateway" and the benchmark itself: both saw the same CPU time.
    assert abs(result["cpu_seconds"]["bench"] - used) <= 0.02
    row = cpu_table([{"scenario": "P1/immediate", "cpu": result, "speed_probe_ms": 30.0}]).splitlines()[-1]
    assert row.startswith("| P1/immediate | ") and row.endswith("| 30.0 |")


def test_nothing_is_reported_without_a_whole_window() -> None:
    meter = CpuMeter(_OneProcess())  # type: ignore[arg-type]
    meter.start()
    assert meter.result(requests=10) is None


def test_cpu_seconds_of_a_gone_process_is_none_and_the_probe_measures() -> None:
    assert procs.cpu_seconds(2**22 + 1) is None  # above the kernel's pid limit
    assert (procs.cpu_seconds(os.getpid()) or 0) > 0
    assert speed_probe_ms() > 0
