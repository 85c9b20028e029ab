"""Schedules: when polling tasks are due, and what happens to ticks that are late (the misfire policy).

Pure timing logic here; the scheduler service runs it, the gateway validates schedules with it.

Misfire policies, for due times found late (more than ``grace`` behind the clock, e.g. while no scheduler
led, or after a long pause):

* ``skip``: late ticks are recorded ``missed``; only a tick due now is run.
* ``run_once`` (default): one tick runs for the latest due time; the other late ones are ``missed``.
  The right policy for polling: one poll sees the whole backlog.
* ``catch_up``: up to ``catch_up_limit`` of the latest due times run, oldest first; the rest are ``missed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from dataclasses import dataclass

from croniter import croniter

MISFIRE_GRACE_SECONDS = 1.0
MAX_DUE_TIMES = 10_000  # late ticks examined at once; older ones are not recorded one by one
MAX_CRON_STEPS = 20_000  # cron due times walked in one firing (the next firing goes on from there)
MIN_INTERVAL_SECONDS = 0.05


@dataclass(frozen=True)
class Timing:
    interval_seconds: float | None
    cron: str | None
    timezone: str = "UTC"

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first due time strictly after ``moment``."""
        if self.interval_seconds is not None:
            return moment + dt.timedelta(seconds=self.interval_seconds)
        assert self.cron is not None
        zone = zoneinfo.ZoneInfo(self.timezone)
        following: dt.datetime = croniter(self.cron, moment.astimezone(zone)).get_next(dt.datetime)
        return following.astimezone(dt.UTC)

    def first_due(self, now: dt.datetime) -> dt.datetime:
        return self.next_after(now)

    @property
    def grace(self) -> dt.timedelta:
        """How late a tick may run and still count as on time."""
        seconds = MISFIRE_GRACE_SECONDS
        if self.interval_seconds is not None:
            seconds = min(seconds, self.interval_seconds)
        return dt.timedelta(seconds=seconds)


def validate_cron(expression: str) -> None:
    if not croniter.is_valid(expression):
        raise ValueError("not a valid cron expression (five fields: minute hour day month weekday)")


def validate_timezone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name[:64]!r}") from None


def due_times(
    timing: Timing, next_due: dt.datetime, now: dt.datetime
) -> tuple[list[dt.datetime], dt.datetime]:
    """The due times from ``next_due`` up to ``now`` (at most MAX_DUE_TIMES, the latest kept), and the next
    due time after them. The work is bounded whatever the schedule and however long nobody fired it."""
    if next_due > now:
        return [], next_due
    if timing.interval_seconds is not None:
        step = dt.timedelta(seconds=timing.interval_seconds)
        behind = int((now - next_due) / step)  # whole steps: the due times are next_due + k * step
        first = max(0, behind - MAX_DUE_TIMES + 1)
        dues = [next_due + k * step for k in range(first, behind + 1)]
        return dues, next_due + (behind + 1) * step
    walked: list[dt.datetime] = []
    moment = next_due
    for _ in range(MAX_CRON_STEPS):
        if moment > now:
            break
        walked.append(moment)
        moment = timing.next_after(moment)
    return walked[-MAX_DUE_TIMES:], moment


@dataclass(frozen=True)
class TickPlan:
    run: list[dt.datetime]
    missed: list[dt.datetime]


def plan(
    dues: list[dt.datetime], now: dt.datetime, policy: str, catch_up_limit: int, grace: dt.timedelta
) -> TickPlan:
    """Which due times run and which are recorded as missed, by the misfire policy."""
    on_time = [d for d in dues if now - d <= grace]
    late = [d for d in dues if now - d > grace]
    if policy == "skip":
        return TickPlan(run=on_time, missed=late)
    if policy == "run_once":
        if on_time:
            return TickPlan(run=on_time, missed=late)
        return TickPlan(run=late[-1:], missed=late[:-1])
    if policy == "catch_up":
        run = dues[-catch_up_limit:]
        return TickPlan(run=run, missed=dues[: len(dues) - len(run)])
    raise ValueError(f"unknown misfire policy {policy!r}")


def jitter_offset(schedule: str, due: dt.datetime, jitter_seconds: float) -> dt.timedelta:
    """A delay in [0, jitter) that is the same on every replica for one tick (derived, not random)."""
    if jitter_seconds <= 0:
        return dt.timedelta(0)
    digest = hashlib.sha256(f"{schedule}|{due.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return dt.timedelta(seconds=fraction * jitter_seconds)


def tick_key(schedule: str, due: dt.datetime) -> str:
    """What identifies a tick: its poll tasks' ids and message ids derive from it."""
    return f"{schedule}@{due.astimezone(dt.UTC).isoformat()}"
