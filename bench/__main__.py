"""End-to-end benchmark of Squall: ``python -m bench [options]`` from the repository root.

For each scenario (profile x mode) a fresh ``squall dev`` is started on a free loopback port with its own
temporary data folder, k6 drives ``POST /v1/requests`` in a closed loop (``--vus`` VUs for ``--duration``)
while ``GET /v1/stats`` is sampled every 0.5 s; after k6, /v1/stats is polled until every accepted request
is processed and no item is pending (PostgreSQL confirms it), the figures are read from PostgreSQL, and
squall dev is stopped.

Profiles: P1 = 1 item per request, P2 = 100 items per request (all items use the ``sum`` processing).
Modes: ``immediate`` (SQUALL_PROCESSINGS__SUM__MODE=immediate: items computed when recorded) and ``batch``
(SQUALL_PROCESSINGS__SUM__MODE=batch with SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS=0.2, i.e. the scheduler
emits poll tasks every 0.2 s instead of the default 2 s, so that polling is not the bottleneck; change it
with --batch-interval).

Figures per scenario: accepted requests/s (k6's 202 count / k6's run duration); items persisted/s end to
end (items in a final state / (last items.updated_at - first requests.created_at), in SQL); HTTP p50/p99
(k6's http_req_duration); end-to-end latency p50/p99 per request (processed_at - created_at, in SQL); peak
RSS per service kind (every 0.5 s, each pid listed in dev.json, max per kind); drain: from the last
acceptance to the last item persisted (in SQL); CPU time per accepted request of each component while k6
ran (/proc, see bench.sampler.CpuMeter), and how fast the machine was just before (bench.report's
speed_probe_ms: shared virtual machines vary by tens of percent). Markdown tables go to stdout;
everything, with a description of the machine and the exact command, to OUT_DIR/bench-STAMP.json, and a
chart (throughput per second over time per scenario, latency percentiles) to OUT_DIR/bench-STAMP.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import db, procs
from bench.chart import write_chart
from bench.dev import SquallDev
from bench.k6run import k6_version, parse_duration, run_k6
from bench.report import cpu_table, machine_info, markdown_table, speed_probe_ms
from bench.sampler import CpuMeter, RssSampler
from bench.stats import StatsWatcher

PROFILES = {"P1": 1, "P2": 100}
MODES = ("immediate", "batch")
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
# After /v1/stats shows the drain: how long PostgreSQL may take to agree (its count is never behind).
CONFIRM_TIMEOUT_SECONDS = 10.0

# squall dev processes not stopped yet: the last line of defence stops them whatever happened.
_LIVE: set[SquallDev] = set()


@dataclass(frozen=True)
class Scenario:
    profile: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.profile}/{self.mode}"

    @property
    def slug(self) -> str:
        return f"{self.profile.lower()}-{self.mode}"

    @property
    def items_per_request(self) -> int:
        return PROFILES[self.profile]


def mode_env(mode: str, batch_interval: float) -> dict[str, str]:
    if mode == "immediate":
        return {"SQUALL_PROCESSINGS__SUM__MODE": "immediate"}
    return {
        "SQUALL_PROCESSINGS__SUM__MODE": "batch",
        "SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS": f"{batch_interval:g}",
    }


def _choices(allowed: tuple[str, ...], normalise: Any = str) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [normalise(part.strip()) for part in text.split(",") if part.strip()]
        bad = [c for c in chosen if c not in allowed]
        if bad or not chosen:
            raise argparse.ArgumentTypeError(f"choose among {', '.join(allowed)} (comma separated)")
        return list(dict.fromkeys(chosen))

    return parse


def _duration(text: str) -> tuple[str, float]:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmark of Squall (squall dev + k6 + PostgreSQL), all on 127.0.0.1.",
    )
    parser.add_argument(
        "--profiles",
        type=_choices(tuple(PROFILES), str.upper),
        default=list(PROFILES),
        help="P1 (1 item/request), P2 (100 items/request); comma separated (default: P1,P2)",
    )
    parser.add_argument(
        "--modes",
        type=_choices(MODES, str.lower),
        default=list(MODES),
        help="immediate, batch; comma separated (default: immediate,batch)",
    )
    parser.add_argument("--duration", type=_duration, default=("20s", 20.0), help="k6 duration (default 20s)")
    parser.add_argument("--vus", type=_positive_int, default=32, help="k6 virtual users (default 32)")
    parser.add_argument(
        "--processors", type=_positive_int, default=1, help="squall dev --processors (default 1)"
    )
    parser.add_argument("--gateways", type=_positive_int, default=2, help="squall dev --gateways (default 2)")
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="results folder (default bench/results)"
    )
    parser.add_argument(
        "--batch-interval",
        type=float,
        default=0.2,
        help="batch mode: SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS (default 0.2)",
    )
    parser.add_argument(
        "--max-backlog-items",
        type=int,
        default=None,
        help="SQUALL_GATEWAY__MAX_BACKLOG_ITEMS for squall dev (default: Squall's own, 1000000)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait after k6 for every request to be processed (default 120)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)"
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep each scenario's data folder (default: removed)"
    )
    return parser


def _say(scenario: Scenario, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {scenario.name}: {text}", flush=True)


def _scenario_env(scenario: Scenario, args: argparse.Namespace) -> dict[str, str]:
    """The SQUALL_* variables squall dev runs this scenario with."""
    env = mode_env(scenario.mode, args.batch_interval)
    if args.max_backlog_items is not None:
        env["SQUALL_GATEWAY__MAX_BACKLOG_ITEMS"] = str(args.max_backlog_items)
    return env


def _describe(scenario: Scenario, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """What the scenario runs, as its result records it."""
    return {
        "scenario": scenario.name,
        "profile": scenario.profile,
        "items_per_request": scenario.items_per_request,
        "mode": scenario.mode,
        "squall_env": env,
        "vus": args.vus,
        "duration": args.duration[0],
        "processors": args.processors,
        "gateways": args.gateways,
    }


async def run_scenario(
    scenario: Scenario, args: argparse.Namespace, stamp: str, result: dict[str, Any]
) -> None:
    """Run one scenario, filling ``result`` as it goes (so an interrupted one still reports what it got)."""
    env = _scenario_env(scenario, args)
    result |= _describe(scenario, args, env)
    data_dir = Path(tempfile.mkdtemp(prefix=f"squall-bench-{scenario.slug}-"))
    logs = args.out_dir / "logs"
    dev = SquallDev(
        procs.free_port(),
        args.processors,
        data_dir,
        env,
        logs / f"bench-{stamp}-{scenario.slug}.log",
        gateways=args.gateways,
    )
    result["logs"] = {"squall_dev": str(dev.log_path), "k6": str(dev.log_path.with_suffix(".k6.log"))}
    _LIVE.add(dev)
    sampler = RssSampler(dev)
    cpu = CpuMeter(dev)
    stop_sampling = asyncio.Event()
    sampler_task: asyncio.Task[None] | None = None
    watcher = StatsWatcher(dev.base_url)
    watcher_task: asyncio.Task[None] | None = None
    try:
        _say(scenario, f"starting squall dev on {dev.base_url} (log {dev.log_path})")
        result["squall_dev_argv"] = dev.argv
        dev.start()
        result["startup_seconds"] = round(await asyncio.to_thread(dev.wait_ready, args.startup_timeout), 2)
        pg_port = dev.postgres_port()
        sampler_task = asyncio.create_task(sampler.run(stop_sampling))
        watcher_task = asyncio.create_task(watcher.run())
        k6 = await _drive_load(scenario, args, stamp, dev, data_dir, watcher, cpu, result)
        await _drain_and_measure(args, pg_port, watcher, k6, result)
    except asyncio.CancelledError:
        result["error"] = "interrupted"
        raise
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        _say(scenario, f"FAILED: {result['error']}")
    finally:
        stop_sampling.set()
        watcher.stop()
        try:
            await _wait_for_samplers(sampler_task, watcher_task)
        finally:
            result["rss"] = sampler.result()
            result["stats_samples"] = watcher.samples
            _say(scenario, "stopping squall dev")
            dev.stop()  # synchronous on purpose: it must complete even while this task is being cancelled
            _LIVE.discard(dev)
            _record_how_dev_ended(dev, result)
            if args.keep_data:
                result["data_dir"] = str(data_dir)
            else:
                dev.remove_data()


async def _drive_load(
    scenario: Scenario,
    args: argparse.Namespace,
    stamp: str,
    dev: SquallDev,
    data_dir: Path,
    watcher: StatsWatcher,
    cpu: CpuMeter,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Run k6 against squall dev, metering each component's CPU meanwhile; k6's figures."""
    duration_text, duration_seconds = args.duration
    _say(scenario, f"k6: {args.vus} VUs for {duration_text}, {scenario.items_per_request} item(s)/request")
    run_id = f"{stamp}-{scenario.slug}"
    result["speed_probe_ms"] = await asyncio.to_thread(speed_probe_ms)
    result["stats_load_started_at"] = watcher.mark()
    cpu.start()
    k6 = await run_k6(
        base_url=dev.base_url,
        items_per_request=scenario.items_per_request,
        vus=args.vus,
        duration=duration_text,
        duration_seconds=duration_seconds,
        run_id=run_id,
        summary_path=data_dir / "k6-summary.json",
        log_path=dev.log_path.with_suffix(".k6.log"),
    )
    cpu.stop()
    result["k6"] = k6
    result["cpu"] = cpu.result(k6["accepted_202"])
    _say(
        scenario,
        f"k6 done: {k6['accepted_202']} accepted, {k6['not_accepted']} not; "
        f"waiting up to {args.drain_timeout:.0f} s for processing",
    )
    return k6


async def _drain_and_measure(
    args: argparse.Namespace, pg_port: int, watcher: StatsWatcher, k6: dict[str, Any], result: dict[str, Any]
) -> None:
    """Wait until every accepted request is processed, then read the figures from PostgreSQL."""
    result["stats_load_ended_at"] = watcher.mark()
    drain = await watcher.wait_drained(k6["accepted_202"], args.drain_timeout)
    watcher.stop()
    # PostgreSQL confirms (it may hold requests k6 gave up on that the gateway accepted anyway).
    confirmed = await db.wait_processed(pg_port, k6["accepted_202"], CONFIRM_TIMEOUT_SECONDS)
    drain |= {"postgres": confirmed, "drained": drain["drained"] and confirmed["drained"]}
    result["drain"] = drain
    result["db"] = await db.measure(pg_port)
    result["timeline"] = await db.timeline(pg_port)
    if not drain["drained"]:
        result["error"] = (
            f"only {confirmed['processed']} of {confirmed['requests']} requests processed "
            f"after {args.drain_timeout:.0f} s (last /v1/stats: {drain['last']})"
        )
    elif confirmed["requests"] != k6["accepted_202"]:
        # More rows than 202s: requests k6 gave up on (timeout) that the gateway accepted anyway.
        seen = k6["accepted_202"]
        result["note"] = f"{confirmed['requests']} requests in the database, {seen} 202s seen"
    if k6["exit_code"] != 0 and "error" not in result:
        result["error"] = f"k6 exited with code {k6['exit_code']}"


async def _wait_for_samplers(*tasks: asyncio.Task[None] | None) -> None:
    """Let the samplers finish their last round; a sampler's failure must not lose the scenario."""
    for task in tasks:
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


def _record_how_dev_ended(dev: SquallDev, result: dict[str, Any]) -> None:
    if dev.leftovers_killed:
        result["leftovers_killed"] = dev.leftovers_killed
    if dev.exited_early is not None and "error" not in result:
        result["error"] = f"squall dev ended by itself during the run (exit code {dev.exited_early})"


async def run_all(
    scenarios: list[Scenario], args: argparse.Namespace, doc: dict[str, Any], stamp: str
) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    for scenario in scenarios:
        result: dict[str, Any] = {"scenario": scenario.name}
        doc["scenarios"].append(result)
        await run_scenario(scenario, args, stamp, result)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    scenarios = [Scenario(p, m) for p in args.profiles for m in args.modes]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc: dict[str, Any] = {
        "command": shlex.join([sys.executable, "-m", "bench", *raw]),
        "cwd": os.getcwd(),
        "machine": machine_info(),
        "k6_version": k6_version(),
        "options": {
            "profiles": args.profiles,
            "modes": args.modes,
            "duration": args.duration[0],
            "vus": args.vus,
            "processors": args.processors,
            "gateways": args.gateways,
            "batch_interval_seconds": args.batch_interval,
            "max_backlog_items": args.max_backlog_items,
            "drain_timeout_seconds": args.drain_timeout,
        },
        "scenarios": [],
    }
    print(f"Squall benchmark: {', '.join(s.name for s in scenarios)}; results in {args.out_dir}", flush=True)
    try:
        asyncio.run(run_all(scenarios, args, doc, stamp))
    except (KeyboardInterrupt, asyncio.CancelledError):
        doc["interrupted"] = True
        print("interrupted", file=sys.stderr)
    finally:
        for dev in list(_LIVE):
            dev.stop()
            _LIVE.discard(dev)
        out = args.out_dir / f"bench-{stamp}.json"
        doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        out.write_text(json.dumps(doc, indent=2) + "\n")
        chart = out.with_suffix(".png")
        try:
            write_chart(doc, chart)
        except Exception as exc:  # the figures are in the JSON already; a chart failure must not hide them
            chart_note = f"no chart ({type(exc).__name__}: {exc})"
        else:
            chart_note = f"chart: {chart}"
        print()
        print(markdown_table(doc["scenarios"]))
        print()
        print(cpu_table(doc["scenarios"]))
        print()
        print(f"results: {out}")
        print(chart_note)
    failed = doc.get("interrupted") or any(s.get("error") for s in doc["scenarios"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
