"""What retention costs: throughput with retention deleting at the rate of intake, and a large backlog of
expired rows cleared while intake runs.

``python -m bench.retention cost [--rounds 2] [--duration 30s]``
    For each round and each profile (P1, P2; immediate mode), two runs one after the other: retention off
    (work kept forever) and retention on with a period of seconds (``--period``, a pass every second), so
    that from the first seconds on it deletes as much as is accepted. k6 drives the usual closed loop (32
    VUs). Per run: requests/s accepted (k6), items/s processed (``/v1/stats``' lifetime totals over the k6
    window: retention deletes rows, never these counts), total CPU per request over k6's, and the requests
    retention deleted during the load (accepted minus kept at the end), as a rate. Alternating the runs in
    one process keeps the machine's drift out of the comparison.

``python -m bench.retention backlog [--rows 10000000] [--rate 400] [--window 300s] [--settings 1000:0]``
    Fills the database with about ``--rows`` rows of finished work: ``--template`` requests submitted through
    the API and processed (batch mode), then copied in SQL with new rids and task ids (a processed request is
    three rows: the request, its task and its processing's result row), all aged past the retention period.
    Then, for each round and each ``--settings`` pair (``batch_size:pause_seconds``), an open-loop P1 load at
    ``--rate`` requests/s for ``--window`` twice: once as the baseline, once with ``squall prune`` (the
    retention pass the scheduler's leader runs) deleting the backlog with that setting, stopped when the
    window ends. Reports the rows per second each setting deleted and the intake's HTTP p50/p99/p99.9 in
    both windows (k6, constant-arrival-rate: no coordinated omission); alternating keeps the machine's drift
    out of the comparison. Ends early when a pass clears the whole backlog.

Results go to stdout as JSON and to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import db, procs
from bench.dev import SquallDev, child_env, squall_command
from bench.k6run import parse_duration, run_k6
from bench.report import machine_info, speed_probe_ms
from bench.sampler import CpuMeter
from bench.stats import poll_until_drained, read_stats, summarise
from squall.core.store.retention import TABLES

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
PROFILES = {"P1": 1, "P2": 100}
DRAIN_SECONDS = 180.0
# Far past any period: the backlog is expired whatever --period says.
AGE_BACKLOG = "UPDATE requests SET processed_at = processed_at - interval '400 days' WHERE processed"
COUNT_BACKLOG = "SELECT count(*) FROM requests WHERE processed_at < now() - interval '300 days'"


async def _drain(dev: SquallDev, at_least: int) -> dict[str, int]:
    totals, done = await poll_until_drained(dev.base_url, at_least, DRAIN_SECONDS)
    if not done:
        raise RuntimeError(f"not drained after {DRAIN_SECONDS:.0f} s: {totals}")
    return totals


class Dev:
    """squall dev for one run: started on entry, stopped and removed on exit."""

    def __init__(self, name: str, env: dict[str, str], out_dir: Path, stamp: str) -> None:
        self.data = Path(tempfile.mkdtemp(prefix=f"squall-retention-{name}-"))
        log = out_dir / "logs" / f"retention-{stamp}-{name}.log"
        self.dev = SquallDev(procs.free_port(), 1, self.data, env, log, gateways=2)

    async def __aenter__(self) -> SquallDev:
        self.dev.start()
        await asyncio.to_thread(self.dev.wait_ready, 120.0)
        return self.dev

    async def __aexit__(self, *_: object) -> None:
        self.dev.stop()
        self.dev.remove_data()


async def cost_run(args: argparse.Namespace, profile: str, retention: bool, stamp: str) -> dict[str, Any]:
    items = PROFILES[profile]
    env = {"SQUALL_PROCESSINGS__SUM__MODE": "immediate"}
    if retention:
        env |= {
            "SQUALL_RETENTION__FINISHED_SECONDS": f"{args.period:g}",
            "SQUALL_RETENTION__INTERVAL_SECONDS": "1",
        }
    name = f"{profile.lower()}-{'on' if retention else 'off'}"
    async with Dev(name, env, args.out_dir, stamp) as dev:
        probe = await asyncio.to_thread(speed_probe_ms)
        before = summarise(await asyncio.to_thread(read_stats, dev.base_url))
        cpu = CpuMeter(dev)
        cpu.start()
        k6 = await run_k6(
            base_url=dev.base_url,
            items_per_request=items,
            duration_seconds=args.duration[1],
            run_id=f"{stamp}-{name}",
            summary_path=dev.data_dir / "k6.json",
            log_path=dev.log_path.with_suffix(".k6.log"),
            vus=32,
            duration=args.duration[0],
        )
        cpu.stop()
        after = summarise(await asyncio.to_thread(read_stats, dev.base_url))
        conn = await asyncpg.connect(db.dsn(dev.postgres_port()), timeout=db.CONNECT_TIMEOUT_SECONDS)
        try:
            kept = int(await conn.fetchval("SELECT count(*) FROM requests"))
        finally:
            await conn.close()
        await _drain(dev, k6["accepted_202"])
    used = cpu.result(k6["accepted_202"]) or {}
    per_request = used.get("us_per_request") or {}
    seconds = k6["duration_seconds"]
    return {
        "profile": profile,
        "retention": retention,
        "speed_probe_ms": probe,
        "accepted_per_second": k6["accepted_per_second"],
        "items_processed_per_second": round((after["items_done"] - before["items_done"]) / seconds),
        "http_p99_ms": k6["http_p99_ms"],
        "cpu_per_request_over_k6": round(per_request["total"] / per_request["k6"], 2)
        if per_request
        else None,
        "requests_kept_at_end": kept,
        "requests_deleted_per_second": round((after["accepted"] - kept) / seconds) if retention else 0,
    }


async def cost(args: argparse.Namespace, stamp: str, doc: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = doc["runs"]
    for _ in range(args.rounds):
        for profile in args.profiles:
            for retention in (False, True):
                runs.append(await cost_run(args, profile, retention, stamp))
                print(json.dumps(runs[-1]), flush=True)
    doc["summary"] = {}
    for profile in args.profiles:

        def median(key: str, on: bool, profile: str = profile) -> float:
            return float(
                statistics.median(r[key] for r in runs if r["profile"] == profile and r["retention"] is on)
            )

        off, on = median("items_processed_per_second", False), median("items_processed_per_second", True)
        doc["summary"][profile] = {
            "items_per_second_off": off,
            "items_per_second_on": on,
            "change": round(on / off - 1, 4),
            "accepted_per_second_change": round(
                median("accepted_per_second", True) / median("accepted_per_second", False) - 1, 4
            ),
            "requests_deleted_per_second": median("requests_deleted_per_second", True),
        }


# Copies of a table's rows: a rid gets a suffix, an id is derived from the original's and the copy's number.
_COLUMNS = """
SELECT column_name, data_type FROM information_schema.columns
WHERE table_name = $1 AND is_identity = 'NO' AND coalesce(column_default, '') NOT LIKE 'nextval%'
ORDER BY ordinal_position
"""
_RENAMED = {"rid": "{c} || ':' || copy", "id": "{u}", "task_id": "{u}", "request_task_id": "{u}"}


async def _clone(conn: asyncpg.Connection, table: str, copies: int) -> None:
    columns = await conn.fetch(_COLUMNS, table)
    values = []
    for column in columns:
        name = column["column_name"]
        uuid = f"md5({name}::text || ':' || copy)::uuid" if column["data_type"] == "uuid" else name
        values.append(_RENAMED[name].format(c=name, u=uuid) if name in _RENAMED else name)
    names = ", ".join(c["column_name"] for c in columns)
    await conn.execute(
        f"INSERT INTO {table} ({names}) SELECT {', '.join(values)} "
        f"FROM {table} AS original CROSS JOIN generate_series(1, {copies}) AS copy",
        timeout=3600,
    )


async def _fill(dev: SquallDev, args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """``--template`` requests through the API and processed, then copied in SQL up to about ``--rows``
    rows, all aged past any retention period."""
    started = time.monotonic()
    k6 = await run_k6(
        base_url=dev.base_url,
        items_per_request=args.template_items,
        duration_seconds=3600.0,
        run_id=f"{stamp}-fill",
        summary_path=dev.data_dir / "k6-fill.json",
        log_path=dev.log_path.with_suffix(".k6.log"),
        vus=32,
        iterations=args.template,
    )
    await _drain(dev, k6["accepted_202"])
    conn = await asyncpg.connect(db.dsn(dev.postgres_port()), timeout=db.CONNECT_TIMEOUT_SECONDS)
    try:
        await conn.execute("DELETE FROM tasks WHERE kind = 'poll'")
        template = sum([int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES])
        copies = max(0, -(-args.rows // template) - 1)
        # Triggers off: the copies are not new intake, and the lifetime counters must not count them.
        await conn.execute("SET session_replication_role = replica")
        for table in TABLES:
            await _clone(conn, table, copies)
        await conn.execute("RESET session_replication_role")
        await conn.execute(AGE_BACKLOG, timeout=3600)
        await conn.execute("VACUUM ANALYZE", timeout=3600)
        rows = {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}", timeout=600)) for table in TABLES
        }
        size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    return {
        "template_requests": k6["accepted_202"],
        "copies": copies,
        "rows": rows,
        "total_rows": sum(rows.values()),
        "database_bytes": size,
        "seconds": round(time.monotonic() - started),
    }


async def _window(dev: SquallDev, args: argparse.Namespace, stamp: str, name: str) -> dict[str, Any]:
    k6 = await run_k6(
        base_url=dev.base_url,
        items_per_request=1,
        duration_seconds=args.window[1],
        run_id=f"{stamp}-{name}",
        summary_path=dev.data_dir / f"k6-{name}.json",
        log_path=dev.log_path.with_suffix(".k6.log"),
        duration=args.window[0],
        rate=args.rate,
    )
    await _drain(dev, 0)
    return {key: k6[key] for key in ("accepted_202", "not_accepted", "dropped_iterations")} | {
        key: k6[key] for key in ("http_p50_ms", "http_p99_ms", "http_p999_ms", "http_max_ms")
    }


async def _backlog_requests(dev: SquallDev) -> int:
    """Requests of the backlog still kept (the intake's own are not expired)."""
    conn = await asyncpg.connect(db.dsn(dev.postgres_port()), timeout=db.CONNECT_TIMEOUT_SECONDS)
    try:
        return int(await conn.fetchval(COUNT_BACKLOG, timeout=600))
    finally:
        await conn.close()


def _start_prune(dev: SquallDev, args: argparse.Namespace, setting: Setting) -> subprocess.Popen[str]:
    env = child_env(
        {
            "SQUALL_DATABASE_URL": db.dsn(dev.postgres_port()),
            "SQUALL_RETENTION__FINISHED_SECONDS": f"{args.period:g}",
            "SQUALL_RETENTION__BATCH_SIZE": str(setting.batch_size),
            "SQUALL_RETENTION__PAUSE_SECONDS": f"{setting.pause_seconds:g}",
        }
    )
    return subprocess.Popen(
        [*squall_command(), "prune"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


async def _pruning_window(
    dev: SquallDev, args: argparse.Namespace, stamp: str, setting: Setting, name: str, rows_per_request: float
) -> dict[str, Any]:
    """The intake's window with ``squall prune`` deleting beside it; the pass is stopped (its open batch
    rolled back) when the window ends, so that every setting is measured over the same length of time."""
    before = await _backlog_requests(dev)
    started = time.monotonic()
    prune = _start_prune(dev, args, setting)
    try:
        window = await _window(dev, args, stamp, name)
    finally:
        finished = prune.poll() is not None
        seconds = time.monotonic() - started
        if not finished:
            prune.terminate()
        _, stderr = await asyncio.to_thread(prune.communicate)
    if finished and prune.returncode != 0:
        raise RuntimeError(f"squall prune failed: {stderr[-2000:]}")
    requests = before - await _backlog_requests(dev)
    return window | {
        "requests_deleted": requests,
        "rows_per_second": round(requests * rows_per_request / seconds),
        "backlog_cleared": finished,
    }


@dataclasses.dataclass(frozen=True)
class Setting:
    batch_size: int
    pause_seconds: float

    @classmethod
    def parse(cls, text: str) -> Setting:
        batch, _, pause = text.partition(":")
        return cls(int(batch), float(pause or 0))

    def __str__(self) -> str:
        return f"{self.batch_size}:{self.pause_seconds:g}"


async def backlog(args: argparse.Namespace, stamp: str, doc: dict[str, Any]) -> None:
    # The scheduler's leader keeps everything: `squall prune` alone deletes (two deleters would skip each
    # other's locked rows and end each other's passes early).
    env = {
        "SQUALL_PROCESSINGS__SUM__MODE": "batch",
        "SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS": "0.2",
        "SQUALL_GATEWAY__MAX_BACKLOG_ITEMS": "0",
        "SQUALL_RETENTION__FINISHED_SECONDS": "0",
        "SQUALL_RETENTION__DEAD_SECONDS": "0",
    }
    async with Dev("backlog", env, args.out_dir, stamp) as dev:
        doc["fill"] = await _fill(dev, args, stamp)
        print(json.dumps(doc["fill"]), flush=True)
        rows_per_request = doc["fill"]["total_rows"] / doc["fill"]["rows"]["requests"]
        for round_number in range(1, args.rounds + 1):
            for setting in args.settings:
                name = f"r{round_number}-{setting.batch_size}-{setting.pause_seconds:g}"
                baseline = await _window(dev, args, stamp, f"{name}-baseline")
                pruning = await _pruning_window(
                    dev, args, stamp, setting, f"{name}-pruning", rows_per_request
                )
                base, during = baseline["http_p99_ms"], pruning["http_p99_ms"]
                run = {
                    "round": round_number,
                    "setting": str(setting),
                    "baseline": baseline,
                    "pruning": pruning,
                    "p99_change": round(during / base - 1, 3) if base else None,
                }
                doc["runs"].append(run)
                print(json.dumps(run), flush=True)
                if pruning["backlog_cleared"]:
                    return
        doc["summary"] = {
            str(setting): {
                "p99_change_median": statistics.median(
                    r["p99_change"] for r in doc["runs"] if r["setting"] == str(setting)
                ),
                "rows_per_second_median": statistics.median(
                    r["pruning"]["rows_per_second"] for r in doc["runs"] if r["setting"] == str(setting)
                ),
            }
            for setting in args.settings
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="default bench/results")
    sub = parser.add_subparsers(dest="command", required=True)
    cost_parser = sub.add_parser(
        "cost", help="throughput with retention deleting at intake rate, and without"
    )
    cost_parser.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    cost_parser.add_argument("--profiles", type=lambda t: t.upper().split(","), default=["P1", "P2"])
    cost_parser.add_argument(
        "--duration", type=parse_duration, default=("30s", 30.0), help="k6 (default 30s)"
    )
    cost_parser.add_argument("--period", type=float, default=5.0, help="retention period, s (default 5)")
    backlog_parser = sub.add_parser("backlog", help="clear a large expired backlog while intake runs")
    backlog_parser.add_argument("--rows", type=int, default=10_000_000, help="expired rows (default 1e7)")
    backlog_parser.add_argument("--template", type=int, default=2000, help="requests through the API")
    backlog_parser.add_argument("--template-items", type=int, default=1, help="items per request (default 1)")
    backlog_parser.add_argument("--rate", type=int, default=400, help="P1 requests/s meanwhile (default 400)")
    backlog_parser.add_argument("--window", type=parse_duration, default=("300s", 300.0), help="each window")
    backlog_parser.add_argument("--period", type=float, default=86_400.0, help="retention period, s")
    backlog_parser.add_argument(
        "--settings",
        type=lambda t: [Setting.parse(part) for part in t.split(",")],
        default=[Setting(1000, 0.0)],
        help="batch:pause pairs, each measured in its own pruning window (default 1000:0)",
    )
    backlog_parser.add_argument("--rounds", type=int, default=1, help="alternations (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc: dict[str, Any] = {
        "command": shlex.join([sys.executable, "-m", "bench.retention", *raw]),
        "machine": machine_info(),
        "runs": [],
    }
    work = cost if args.command == "cost" else backlog

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await work(args, stamp, doc)

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        doc["interrupted"] = True
    finally:
        out = args.out_dir / f"retention-{args.command}-{stamp}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        shown = {k: v for k, v in doc.items() if k not in ("machine", "runs")}
        print(json.dumps(shown, indent=2))
        print(f"results: {out}")
    return 1 if doc.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
