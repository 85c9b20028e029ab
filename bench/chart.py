"""The PNG chart of a run: throughput over time per scenario, then the latency percentiles of every scenario.

Throughput comes from PostgreSQL's timestamps (per-second buckets since the first acceptance, bench/db.py);
the backlog line from the /v1/stats samples taken during the run (bench/stats.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENCIES = (
    ("HTTP p50", "k6", "http_p50_ms"),
    ("HTTP p99", "k6", "http_p99_ms"),
    ("e2e p50", "db", "e2e_p50_ms"),
    ("e2e p99", "db", "e2e_p99_ms"),
)


def write_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib  # a dev dependency: imported here so that a missing one costs the chart only

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    scenarios = [s for s in doc["scenarios"] if s.get("timeline")]
    rows = len(scenarios) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), squeeze=False)
    for ax, scenario in zip(axes[:-1, 0], scenarios, strict=True):
        _throughput(ax, scenario)
    _latencies(axes[-1, 0], doc["scenarios"])
    machine, options = doc.get("machine", {}), doc["options"]
    fig.suptitle(
        f"Squall benchmark {machine.get('date', '')}: {options['vus']} VUs, {options['duration']}, "
        f"{options['processors']} processors, {machine.get('nproc', '?')} CPUs "
        f"(commit {str(machine.get('squall_commit') or '?')[:7]})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _throughput(ax: Any, scenario: dict[str, Any]) -> None:
    timeline = scenario["timeline"]
    seconds = timeline["second"]
    items_per_request = scenario.get("items_per_request", 1)
    ax.plot(seconds, timeline["requests_accepted"], label="requests accepted/s", color="tab:blue")
    ax.plot(seconds, timeline["requests_processed"], label="requests processed/s", color="tab:green")
    ax.set_ylabel("requests/s")
    ax.set_xlabel("seconds since the first acceptance")
    ax.grid(alpha=0.3)
    items = ax.twinx()
    items.plot(seconds, timeline["items_persisted"], label="items persisted/s", color="tab:orange", lw=1)
    items.set_ylabel("items/s")
    k6_seconds = (scenario.get("k6") or {}).get("duration_seconds")
    if k6_seconds:
        ax.axvline(k6_seconds, color="grey", ls="--", lw=1, label="load ends (k6 run time)")
    backlog = scenario.get("stats_samples") or []
    load_started = scenario.get("stats_load_started_at")
    if backlog and load_started is not None:
        # /v1/stats samples are on the watcher's clock; k6 started at load_started on that clock.
        items.plot(
            [s["t"] - load_started for s in backlog],
            [s["accepted"] * items_per_request - s["items_done"] - s["items_failed"] for s in backlog],
            label="items not processed (/v1/stats, approx.)",
            color="tab:red",
            ls=":",
        )
    ax.set_xlim(left=0)
    lines = ax.get_legend_handles_labels()
    more = items.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower center", ncol=3)
    error = f"  ERROR: {scenario['error'][:60]}" if scenario.get("error") else ""
    ax.set_title(scenario["scenario"] + error)


def _latencies(ax: Any, scenarios: list[dict[str, Any]]) -> None:
    width = 0.8 / len(LATENCIES)
    for index, (label, source, key) in enumerate(LATENCIES):
        values = [float((s.get(source) or {}).get(key) or 0) for s in scenarios]
        positions = [i + (index - (len(LATENCIES) - 1) / 2) * width for i in range(len(scenarios))]
        bars = ax.bar(positions, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(scenarios)), [s["scenario"] for s in scenarios])
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("latency percentiles: HTTP (k6) and end to end (PostgreSQL: processed_at - created_at)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
