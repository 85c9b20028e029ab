"""Three scheduler replicas, a 200 ms schedule, the leader SIGKILLed over and over: every tick once."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from squall.core.settings import Settings
from tests.integration import effect_processings
from tests.integration.harness import ServiceProcesses, System, make_settings, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.effect_processings"
INTERVAL = 0.2
LEASE = 3.0
# A leader kill: (monotonic, wall clock, epoch before).
_Kill = tuple[float, dt.datetime, int]


class Replicas(ServiceProcesses):
    """``squall scheduler`` processes, named scheduler-1, scheduler-2, … as they are started."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(
            settings,
            log_dir,
            SQUALL_PROCESSING_MODULES=MODULE,
            SQUALL_SCHEDULER__DEFAULT_INTERVAL_SECONDS=str(INTERVAL),
            SQUALL_SCHEDULER__LEASE_SECONDS=str(LEASE),
        )
        self.count = 0

    def start(self) -> str:  # type: ignore[override]
        self.count += 1
        name = f"scheduler-{self.count}"
        super().start("scheduler", name)
        return name


@pytest.fixture
def replicas(settings: Settings, tmp_path: Path) -> Iterator[Replicas]:
    running = Replicas(settings, tmp_path)
    yield running
    running.stop_all()


@pytest.mark.slow
async def test_leader_killed_repeatedly_every_tick_once(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    replicas: Replicas,
) -> None:
    effect_processings.RECORDED.clear()
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)
    for _ in range(3):
        replicas.start()
    await wait_for(lambda: _leader(system), timeout=30, what="a leader")
    kills = await _kill_leaders_while_feeding(system, replicas)

    async def all_processed() -> bool:
        return bool(await system.fetchval("SELECT bool_and(processed) FROM requests"))

    await wait_for(all_processed, timeout=30, interval=0.25, what="every request processed")
    replicas.stop_all()

    ticks = await system.fetch(
        "SELECT due_at, outcome, tasks, leader_epoch, emitted_at FROM schedule_ticks "
        "WHERE schedule = 'record' ORDER BY due_at"
    )
    assert len(ticks) >= 300, len(ticks)
    # No tick lost: the due times form one unbroken series, each recorded once.
    gaps = {round((b["due_at"] - a["due_at"]).total_seconds(), 6) for a, b in itertools.pairwise(ticks)}
    assert gaps == {INTERVAL}, gaps
    _check_missed_ticks_follow_run_once(ticks)
    near_kills = sum(
        1
        for t in ticks
        if t["outcome"] == "missed"
        and any(0 <= (t["due_at"] - k).total_seconds() < LEASE + 1 for _, k, _ in kills)
    )
    # No tick processed twice: one poll task per emitted batch, each run exactly once.
    await _check_each_tick_processed_once(system, ticks)
    failovers = _failover_seconds(ticks, kills)
    assert len(kills) >= 4
    assert max(failovers) < 5.0, failovers
    outcomes = Counter(t["outcome"] for t in ticks)
    print(
        f"\nscheduler failover: {len(ticks)} ticks {dict(outcomes)}, {len(kills)} leader kills, "
        f"failover seconds {[round(f, 2) for f in failovers]} (max {max(failovers):.2f}); "
        f"{near_kills} of the missed ticks fell within a failover"
    )


async def _leader(system: System) -> str | None:
    return await system.fetchval(  # type: ignore[no-any-return]
        "SELECT holder FROM scheduler_leader WHERE expires_at > now()"
    )


async def _kill_leaders_while_feeding(system: System, replicas: Replicas) -> list[_Kill]:
    """For 66 s, SIGKILL the leader every 11 s and start a replacement while requests keep coming."""
    feeding = True

    async def feed() -> None:
        number = 0
        while feeding:
            await system.submit(
                {"items": [{"number": number + i, "job": "record"} for i in range(3)]}, expect=202
            )
            number += 3
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    kills: list[_Kill] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 66:
            await asyncio.sleep(11)
            victim = await _leader(system)
            if victim is None:
                continue
            epoch = await system.fetchval("SELECT epoch FROM scheduler_leader")
            replicas.kill(victim)
            kills.append((time.monotonic(), dt.datetime.now(dt.UTC), int(epoch)))
            replicas.start()  # keep three replicas
        # Let the last failover complete before stopping: a tick fired by a newer epoch than the last kill's.
        if kills:
            last_epoch = kills[-1][2]

            async def failed_over() -> bool:
                newest = await system.fetchval("SELECT max(leader_epoch) FROM schedule_ticks")
                return bool(newest and newest > last_epoch)

            await wait_for(failed_over, timeout=15, what="the last failover")
    finally:
        feeding = False
        await feeder
    return kills


def _check_missed_ticks_follow_run_once(ticks: list[Any]) -> None:
    """Missed ticks are what the run_once policy says: fired in one transaction (one emitted_at) with a
    later due time that ran, and late by more than the grace when they were looked at."""
    by_firing: dict[dt.datetime, list[Any]] = {}
    for tick in ticks:
        by_firing.setdefault(tick["emitted_at"], []).append(tick)
    for group in by_firing.values():
        missed = [t for t in group if t["outcome"] == "missed"]
        ran = [t for t in group if t["outcome"] != "missed"]
        if missed:
            assert len(ran) == 1 and ran[0]["due_at"] > max(t["due_at"] for t in missed), group
            assert all((t["emitted_at"] - t["due_at"]).total_seconds() > INTERVAL for t in missed), group


async def _check_each_tick_processed_once(system: System, ticks: list[Any]) -> None:
    emitted = sum(t["tasks"] for t in ticks if t["outcome"] == "emitted")
    tasks = await system.fetch("SELECT state, attempts FROM tasks WHERE kind = 'poll'")
    assert len(tasks) == emitted
    assert all(t["state"] == "succeeded" and t["attempts"] == 1 for t in tasks), Counter(
        (t["state"], t["attempts"]) for t in tasks
    )
    computed = Counter(effect_processings.RECORDED)
    assert computed and max(computed.values()) == 1


def _failover_seconds(ticks: list[Any], kills: list[_Kill]) -> list[float]:
    """From each kill to the first tick fired by the next leader."""
    failovers = []
    for _, kill_wall, epoch in kills:
        first = min(
            (t["emitted_at"] for t in ticks if t["leader_epoch"] > epoch and t["emitted_at"] > kill_wall),
            default=None,
        )
        assert first is not None
        failovers.append((first - kill_wall).total_seconds())
    return failovers
