"""Machine description and the Markdown table of results."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def speed_probe_ms() -> float:
    """Milliseconds this machine takes now for a fixed pure-Python loop (best of three).

    Shared virtual machines speed up and slow down by tens of percent from one minute to the next; a run's
    figures are comparable with another's only next to this (k6's CPU per request says the same under load).
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine_info() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "loadavg_at_start": list(load) if load else None,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "squall_commit": _git("rev-parse", "HEAD"),
        "squall_tracked_changes": bool(dirty) if dirty is not None else None,
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


SERVICES = ("gateway", "processor", "scheduler", "nats", "postgres")


def markdown_table(results: list[dict[str, Any]]) -> str:
    header = [
        "Scenario",
        "accepted req/s",
        "items/s e2e",
        "HTTP p50 ms",
        "HTTP p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
        "drain s",
        *[f"RSS {s} MB" for s in SERVICES],
        "notes",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|",
    ]
    for r in results:
        k6 = r.get("k6") or {}
        db = r.get("db") or {}
        rss = (r.get("rss") or {}).get("peak_mb", {})
        notes = []
        if r.get("error"):
            notes.append(f"ERROR: {r['error'].splitlines()[0][:80]}")
        if k6.get("not_accepted"):
            notes.append(f"{k6['not_accepted']} not 202")
        if db and not (r.get("drain") or {}).get("drained", True):
            notes.append("not fully processed")
        if db.get("items_failed"):
            notes.append(f"{db['items_failed']} items failed")
        if r.get("leftovers_killed"):
            notes.append(f"{len(r['leftovers_killed'])} process(es) left running, killed")
        restarts = (r.get("rss") or {}).get("restarts")
        if restarts:
            notes.append(f"restarts {restarts}")
        row = [
            r["scenario"],
            _fmt(k6.get("accepted_per_second"), 1),
            _fmt(db.get("items_per_second"), 0),
            _fmt(k6.get("http_p50_ms"), 1),
            _fmt(k6.get("http_p99_ms"), 1),
            _fmt(db.get("e2e_p50_ms"), 0),
            _fmt(db.get("e2e_p99_ms"), 0),
            _fmt(db.get("drain_seconds"), 2),
            *[_fmt(rss.get(s), 0) for s in SERVICES],
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


CPU_COMPONENTS = ("gateway", "processor", "scheduler", "nats", "postgres", "k6", "bench", "total")


def cpu_table(results: list[dict[str, Any]]) -> str:
    """CPU µs per accepted request of each component while k6 ran (and the cores busy in all)."""
    header = ["Scenario", *[f"{c} µs/req" for c in CPU_COMPONENTS], "cores busy", "speed probe ms"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in results:
        cpu = r.get("cpu") or {}
        per_request = cpu.get("us_per_request") or {}
        busy = (cpu.get("cores_busy") or {}).get("total")
        row = [
            r["scenario"],
            *[_fmt(per_request.get(c)) for c in CPU_COMPONENTS],
            _fmt(busy, 2),
            _fmt(r.get("speed_probe_ms"), 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
