"""Soak: is the database's size on disk flat under a steady load once retention deletes what it accepts?

``python -m bench.soak [--duration 30m] [--retention 180]`` starts ``squall dev`` with a retention period of
a few minutes, puts a steady open-loop P1 and P2 load on it (two k6 processes, ``bench/k6/steady.js``) and
every ``--sample-every`` seconds records: the bytes on disk of the tables retention deletes from (indexes
and TOAST included) and of the whole database, the requests kept, the lifetime totals of ``/v1/stats``
and every service's memory (RSS; PostgreSQL's proportional set size). After the load it waits until
every accepted request is processed.

Verdicts, over the samples taken after ``--settle`` seconds (default: twice the retention period, once
the first period's rows are gone and autovacuum has had a period to make their space reusable):
- the tables' size stays within ``--tolerance`` (±10 %) of its median;
- no service's memory grows by more than the tolerance (the last quarter's median against the first's);
- no request lost: the 202s k6 counted equal the requests ``/v1/stats`` accepted, and every one of them
  is processed (lifetime totals: retention deletes the rows, never the counts).
JSON and a PNG (size, throughput and RSS over time) go to ``--out-dir``; the exit code is 1 if a verdict
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import db, procs
from bench.dev import SquallDev
from bench.k6run import K6_EXTRA_SECONDS, parse_duration, run_k6
from bench.report import machine_info
from bench.stats import poll_until_drained, read_stats, summarise
from squall.core.store.retention import TABLES

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
# Each load: (profile, items per request); the rates are options.
LOADS = (("P1", 1), ("P2", 100))

_SIZES = """
SELECT (SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(CAST($1 AS text[])) AS t) AS tables,
       pg_database_size(current_database()) AS database,
       (SELECT count(*) FROM requests) AS requests_kept
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=parse_duration, default=("30m", 1800.0), help="load (default 30m)")
    parser.add_argument("--retention", type=float, default=180.0, help="finished period, s (default 180)")
    parser.add_argument("--retention-interval", type=float, default=10.0, help="pass every N s (default 10)")
    parser.add_argument("--p1-rate", type=int, default=300, help="P1 requests/s (default 300)")
    parser.add_argument("--p2-rate", type=int, default=10, help="P2 requests/s of 100 items (default 10)")
    parser.add_argument("--processors", type=int, default=1, help="squall dev --processors (default 1)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--settle", type=float, default=None, help="verdicts from here, s (default 2 x period)"
    )
    parser.add_argument("--tolerance", type=float, default=0.10, help="flat within ± this (default 0.10)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="default bench/results")
    parser.add_argument(
        "--report", type=Path, help="no run: the verdicts and chart of a saved soak-*.json, written beside it"
    )
    return parser


def report(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Recompute a saved run's verdicts (with this run's --settle and --tolerance) and redraw its chart."""
    doc: dict[str, Any] = json.loads(path.read_text())
    options = doc["options"]
    settle = args.settle if args.settle is not None else 2 * options["retention"]
    doc["verdicts"] = verdicts(doc["samples"], list(doc["k6"].values()), settle, args.tolerance)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    write_chart(doc, path.with_suffix(".png"))
    return doc


def _memory_mb(dev: SquallDev) -> dict[str, float]:
    """Memory of each process squall dev lists, by name: its RSS; PostgreSQL's as the proportional set size
    of the postmaster and its backends together (their RSS would count the shared buffers once per backend,
    and grow as each backend touches more of them)."""
    memory: dict[str, float] = {}
    for entry in dev.state():
        if entry["service"] == "postgres":
            pids = [entry["pid"], *procs.children(entry["pid"])]
            kb: int | None = sum(procs.pss_kb(pid) or 0 for pid in pids)
        else:
            kb = procs.rss_kb(entry["pid"])
        if kb:
            memory[str(entry.get("name", entry["service"]))] = round(kb / 1024, 1)
    return memory


async def _sample(dev: SquallDev, conn: asyncpg.Connection, started: float, phase: str) -> dict[str, Any]:
    sizes = await conn.fetchrow(_SIZES, list(TABLES))
    assert sizes is not None
    totals = summarise(await asyncio.to_thread(read_stats, dev.base_url))
    return {
        "t": round(time.monotonic() - started, 1),
        "phase": phase,
        "tables_bytes": int(sizes["tables"]),
        "database_bytes": int(sizes["database"]),
        "requests_kept": int(sizes["requests_kept"]),
        **totals,
        "rss_mb": await asyncio.to_thread(_memory_mb, dev),
    }


async def _sample_until(
    dev: SquallDev, port: int, every: float, stop: asyncio.Event, samples: list[dict[str, Any]]
) -> None:
    started = time.monotonic()
    conn = await asyncpg.connect(db.dsn(port), timeout=db.CONNECT_TIMEOUT_SECONDS)
    try:
        while not stop.is_set():
            samples.append(await _sample(dev, conn, started, "load"))
            print(f"[{time.strftime('%H:%M:%S')}] {json.dumps(samples[-1])}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
        samples.append(await _sample(dev, conn, started, "drained"))
    finally:
        await conn.close(timeout=5)


def _within(values: list[float], tolerance: float) -> dict[str, Any]:
    middle = statistics.median(values)
    low, high = min(values), max(values)
    worst = max(abs(low - middle), abs(high - middle)) / middle if middle else 0.0
    return {
        "median": middle,
        "min": low,
        "max": high,
        "worst_deviation": round(worst, 4),
        "flat": worst <= tolerance,
    }


def _trend(values: list[float], tolerance: float) -> dict[str, Any]:
    """The median of the last quarter against the first quarter's: memory that follows the load up and down
    is fine, memory that keeps growing is not."""
    quarter = max(1, len(values) // 4)
    first, last = statistics.median(values[:quarter]), statistics.median(values[-quarter:])
    growth = last / first - 1 if first else 0.0
    return {
        "first_quarter": first,
        "last_quarter": last,
        "growth": round(growth, 4),
        "flat": growth <= tolerance,
    }


def verdicts(
    samples: list[dict[str, Any]], k6: list[dict[str, Any]], settle: float, tolerance: float
) -> dict[str, Any]:
    """Flatness of size and RSS under the load after ``settle`` seconds, and no request lost."""
    settled = [s for s in samples if s["t"] >= settle and s["phase"] == "load"]
    if len(settled) < 3:
        return {"error": f"only {len(settled)} samples after {settle:.0f} s: run longer or settle sooner"}
    rss_names = sorted(set.intersection(*(set(s["rss_mb"]) for s in settled)))
    last = samples[-1]
    accepted_202 = sum(run["accepted_202"] for run in k6)
    result: dict[str, Any] = {
        "settle_seconds": settle,
        "samples": len(settled),
        "tables_bytes": _within([s["tables_bytes"] for s in settled], tolerance),
        "database_bytes": _within([s["database_bytes"] for s in settled], tolerance),
        "rss_mb": {name: _trend([s["rss_mb"][name] for s in settled], tolerance) for name in rss_names},
        "accepted_202": accepted_202,
        "accepted": last["accepted"],
        "processed": last["processed"],
    }
    result["nothing_lost"] = last["accepted"] == accepted_202 and last["processed"] == last["accepted"]
    result["passed"] = (
        result["tables_bytes"]["flat"]
        and all(r["flat"] for r in result["rss_mb"].values())
        and result["nothing_lost"]
    )
    return result


async def soak(args: argparse.Namespace, stamp: str, doc: dict[str, Any]) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels the run, so that squall dev is stopped below rather than left running.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    data_dir = Path(tempfile.mkdtemp(prefix="squall-soak-"))
    env = {
        "SQUALL_RETENTION__FINISHED_SECONDS": f"{args.retention:g}",
        "SQUALL_RETENTION__INTERVAL_SECONDS": f"{args.retention_interval:g}",
    }
    doc["squall_env"] = env
    dev = SquallDev(
        procs.free_port(), args.processors, data_dir, env, args.out_dir / "logs" / f"soak-{stamp}.log"
    )
    dev.start()
    try:
        await asyncio.to_thread(dev.wait_ready, 120.0)
        stop = asyncio.Event()
        samples: list[dict[str, Any]] = doc["samples"]
        sampling = asyncio.create_task(
            _sample_until(dev, dev.postgres_port(), args.sample_every, stop, samples)
        )
        duration_text, duration_seconds = args.duration
        rates = {"P1": args.p1_rate, "P2": args.p2_rate}
        k6 = await asyncio.gather(
            *(
                run_k6(
                    base_url=dev.base_url,
                    items_per_request=items,
                    duration_seconds=duration_seconds,
                    run_id=f"soak-{stamp}-{profile}",
                    summary_path=data_dir / f"k6-{profile}.json",
                    log_path=dev.log_path.with_suffix(f".k6-{profile}.log"),
                    duration=duration_text,
                    rate=rates[profile],
                )
                for profile, items in LOADS
            )
        )
        doc["k6"] = dict(zip((p for p, _ in LOADS), k6, strict=True))
        accepted = sum(run["accepted_202"] for run in k6)
        doc["after_load"], _ = await poll_until_drained(dev.base_url, accepted, K6_EXTRA_SECONDS * 2)
        stop.set()
        await sampling
        settle = args.settle if args.settle is not None else 2 * args.retention
        doc["verdicts"] = verdicts(samples, list(k6), settle, args.tolerance)
    finally:
        dev.stop()
        dev.remove_data()


def write_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = doc["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (size, rate, rss) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    size.plot(minutes, [s["tables_bytes"] / 2**20 for s in samples], label="tables retention deletes from")
    size.plot(minutes, [s["database_bytes"] / 2**20 for s in samples], label="whole database")
    settle = (doc.get("verdicts") or {}).get("settle_seconds")
    for ax in (size, rate, rss):
        if settle is not None:
            ax.axvline(settle / 60, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    size.set_ylabel("MiB on disk")
    size.legend(loc="lower right")
    pairs = list(itertools.pairwise(samples))
    for key, label in (("accepted", "requests accepted/s"), ("processed", "requests processed/s")):
        per_second = [(b[key] - a[key]) / max(b["t"] - a["t"], 1e-9) for a, b in pairs]
        rate.plot([b["t"] / 60 for _, b in pairs], per_second, label=label)
    rate.set_ylabel("requests/s")
    rate.legend(loc="lower right")
    for name in sorted(samples[-1]["rss_mb"]):
        rss.plot(minutes, [s["rss_mb"].get(name) for s in samples], label=name, lw=1)
    rss.set_ylabel("RSS MiB")
    rss.set_xlabel("minutes since the load started (dashed: verdicts from here)")
    rss.legend(loc="upper left", fontsize=7, ncol=3)
    options = doc["options"]
    fig.suptitle(
        f"Squall soak {doc['machine'].get('date', '')}: "
        f"P1 {options['p1_rate']}/s + P2 {options['p2_rate']}/s "
        f"x 100 items, retention {options['retention']:g} s (commit "
        f"{str(doc['machine'].get('squall_commit') or '?')[:7]})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    if args.report is not None:
        done = report(args.report, args)
        print(json.dumps(done["verdicts"], indent=2))
        return 0 if done["verdicts"].get("passed") else 1
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc: dict[str, Any] = {
        "command": shlex.join([sys.executable, "-m", "bench.soak", *raw]),
        "machine": machine_info(),
        "options": {
            k: (v[0] if k == "duration" else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "samples": [],
    }
    try:
        asyncio.run(soak(args, stamp, doc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        doc["interrupted"] = True
    finally:
        out = args.out_dir / f"soak-{stamp}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        if doc["samples"]:
            write_chart(doc, out.with_suffix(".png"))
        print(json.dumps({k: doc.get(k) for k in ("k6", "after_load", "verdicts")}, indent=2))
        print(f"results: {out} and {out.with_suffix('.png')}")
    return 0 if (doc.get("verdicts") or {}).get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
