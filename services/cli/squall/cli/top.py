"""``squall top``: a live terminal view of a running Squall, read from the gateway's HTTP API.

Every refresh reads ``GET /v1/stats`` (totals), ``/v1/processings`` (paused, claimable now),
``/v1/dependencies``, ``/v1/schedulers`` (leader), ``/v1/tasks?state=dead&limit=5`` (latest dead letters) and
``/v1/retention`` (the database's size, the oldest finished work kept);
rates are the differences between two refreshes. A section whose endpoint fails says so; the others still
show. Plain ANSI redraw: no terminal library needed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

CLEAR = "\x1b[H\x1b[2J"
DEAD_LETTERS = 5


@dataclass
class Snapshot:
    """What one refresh read; an endpoint that failed leaves its error instead of its answer."""

    at: float
    answers: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


ENDPOINTS = {
    "stats": "/v1/stats",
    "processings": "/v1/processings",
    "dependencies": "/v1/dependencies",
    "schedulers": "/v1/schedulers",
    "dead": f"/v1/tasks?state=dead&limit={DEAD_LETTERS}",
    "retention": "/v1/retention",
}


def _get(url: str, token: str | None, timeout: float) -> Any:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def read(base_url: str, token: str | None, timeout: float = 5.0) -> Snapshot:
    snapshot = Snapshot(at=time.monotonic())
    for key, path in ENDPOINTS.items():
        try:
            snapshot.answers[key] = _get(base_url.rstrip("/") + path, token, timeout)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = exc.reason
            snapshot.errors[key] = f"HTTP {exc.code}: {detail}"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            snapshot.errors[key] = f"unreachable: {reason}"
    return snapshot


def _rate(now: float | None, before: float | None, seconds: float) -> str:
    if now is None or before is None or seconds <= 0:
        return "-"
    return f"{max(now - before, 0) / seconds:,.1f}/s"


def _short(text: Any, width: int) -> str:
    value = " ".join(str(text).split())
    return value if len(value) <= width else value[: width - 1] + "…"


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%H:%M:%S")
    except ValueError:
        return iso


def render(current: Snapshot, previous: Snapshot | None, url: str, interval: float) -> list[str]:
    """The screen as lines (pure: tests and --once use it as is)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"squall top  {url}  {now}  (every {interval:g} s)", ""]
    seconds = current.at - previous.at if previous is not None else 0.0
    before = previous.answers.get("stats") if previous is not None else None

    stats = current.answers.get("stats")
    lines += _requests_section(current, before, seconds)
    items: dict[str, dict[str, int]] = {} if stats is None else stats["items"]
    lines.append("")
    lines += _processings_section(current, stats, before, items, seconds)
    lines.append("")
    lines += _dependencies_section(current)
    lines.append("")
    lines += _scheduler_section(current)
    lines += _database_section(current)
    lines.append("")
    lines += _dead_letters_section(current)
    return lines


def _requests_section(current: Snapshot, before: Any, seconds: float) -> list[str]:
    """Request totals and the intake and completion rates since the previous refresh."""
    stats = current.answers.get("stats")
    if stats is None:
        return [f"requests     {current.errors.get('stats', 'no answer')}"]
    req, old = stats["requests"], (before or {}).get("requests", {})
    intake = _rate(req["accepted"], old.get("accepted"), seconds)
    completion = _rate(req["processed"], old.get("processed"), seconds)
    unrecorded = req["accepted"] - req["recorded"]
    return [
        f"requests     accepted  {req['accepted']:>12,}   intake     {intake:>12}",
        f"             processed {req['processed']:>12,}   completion {completion:>12}",
        f"             pending   {req['pending']:>12,}   not recorded yet {unrecorded:,}",
    ]


def _processings_section(
    current: Snapshot, stats: Any, before: Any, items: dict[str, dict[str, int]], seconds: float
) -> list[str]:
    """One row per processing known to /v1/stats or /v1/processings."""
    processings = {p["name"]: p for p in current.answers.get("processings", {}).get("processings", [])}
    dead_counts = (stats or {}).get("dead_tasks", {})
    old_items = (before or {}).get("items", {})
    lines = [
        f"{'processing':<16}{'mode':<10}{'backlog':>10}{'claimable':>11}{'done':>12}{'failed':>9}{'dead':>6}"
        f"{'done/s':>11}  state"
    ]
    for name in sorted({*items, *processings}):
        counts = items.get(name, {"pending": 0, "done": 0, "failed": 0})
        view = processings.get(name, {})
        state = "paused" if view.get("paused") else ("unregistered" if not view else "active")
        done_rate = _rate(counts["done"], old_items.get(name, {}).get("done"), seconds)
        lines.append(
            f"{_short(name, 15):<16}{view.get('mode', '-'):<10}{counts['pending']:>10,}"
            f"{view.get('pending', 0) if view else 0:>11,}{counts['done']:>12,}{counts['failed']:>9,}"
            f"{dead_counts.get(name, 0):>6,}{done_rate:>11}  {state}"
        )
    if "processings" in current.errors:
        lines.append(f"  (processings: {current.errors['processings']})")
    return lines


def _dependencies_section(current: Snapshot) -> list[str]:
    lines = ["dependencies"]
    if "dependencies" in current.errors:
        lines.append(f"  {current.errors['dependencies']}")
        return lines
    deps = current.answers.get("dependencies", {}).get("dependencies", [])
    if not deps:
        lines.append("  (none configured)")
    for dep in deps:
        error = f"  {_short(dep['last_error'], 50)}" if dep.get("last_error") and dep["state"] != "up" else ""
        name, since = _short(dep["name"], 20), _clock(dep.get("since"))
        lines.append(f"  {name:<22}{dep['kind']:<8}{dep['state'].upper():<9}since {since}{error}")
    return lines


def _scheduler_section(current: Snapshot) -> list[str]:
    if "schedulers" in current.errors:
        return [f"scheduler    {current.errors['schedulers']}"]
    view = current.answers.get("schedulers", {})
    instances = len(view.get("instances", []))
    leader = view.get("leader") or "NONE (no scheduler leads: no polling tasks are emitted)"
    return [f"scheduler    leader {leader}  ({instances} instance{'s' if instances != 1 else ''})"]


def _database_section(current: Snapshot) -> list[str]:
    """The size of the tables of work, and how old the oldest finished request kept is."""
    if "retention" in current.errors:
        return [f"database     {current.errors['retention']}"]
    view = current.answers.get("retention", {})
    total = sum(view.get("table_bytes", {}).values())
    oldest = (view.get("oldest_finished_seconds") or {}).get("requests")
    kept = "no finished request kept" if oldest is None else f"oldest finished request {_duration(oldest)}"
    period = view.get("finished_seconds") or 0
    retention = f"kept {_duration(period)}" if period else "kept forever"
    return [f"database     {total / 2**20:,.1f} MiB of work, {kept} ({retention})"]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _dead_letters_section(current: Snapshot) -> list[str]:
    lines = [f"dead letters (latest {DEAD_LETTERS})"]
    if "dead" in current.errors:
        lines.append(f"  {current.errors['dead']}")
        return lines
    dead = current.answers.get("dead", {}).get("tasks", [])
    if not dead:
        lines.append("  (none)")
    for task in dead:
        processing = _short(task.get("processing") or "-", 14)
        lines.append(
            f"  {_clock(task.get('updated_at'))}  {task['task_id']}  {processing:<15}"
            f"{_short(task.get('error') or '', 60)}"
        )
    return lines


def run(url: str, token: str | None, interval: float, once: bool) -> int:
    """Redraw every ``interval`` seconds until Ctrl-C; with ``once``, print one screen (two reads
    ``interval`` apart, so it has rates) and exit: 0 if the gateway answered /v1/stats, 1 otherwise."""
    previous = read(url, token)
    if once:
        time.sleep(interval)
        current = read(url, token)
        sys.stdout.write("\n".join(render(current, previous, url, interval)) + "\n")
        return 0 if "stats" in current.answers else 1
    try:
        _draw(render(previous, None, url, interval))
        while True:
            time.sleep(max(0.0, interval - (time.monotonic() - previous.at)))
            current = read(url, token)
            _draw(render(current, previous, url, interval))
            previous = current
    except KeyboardInterrupt:
        return 0


def _draw(lines: list[str]) -> None:
    width, height = shutil.get_terminal_size()
    sys.stdout.write(CLEAR + "\n".join(line[:width] for line in lines[:height]) + "\n")
    sys.stdout.flush()
