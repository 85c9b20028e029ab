"""A processor SIGKILLed mid-batch: its items are reclaimed, every item gets exactly one result."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from squall.core.settings import Settings
from tests.integration.harness import ProcessorProcesses, System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[ProcessorProcesses]:
    procs = ProcessorProcesses(settings, tmp_path / "effects.log", tmp_path)
    yield procs
    procs.stop_all()


@pytest.mark.slow
async def test_sigkill_mid_batch_then_restart(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    processes: ProcessorProcesses,
) -> None:
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)  # in-process: records requests only
    requests, per_request = 6, 20
    for r in range(requests):
        await system.submit(
            {
                "rid": f"k{r}",
                "items": [{"number": r * 100 + i, "job": "slow_record"} for i in range(per_request)],
            }
        )
    await system.stop_processors_once_recorded(requests * per_request)  # then only OS processes run tasks
    for _ in range(5):
        await system.publish_poll("slow_record", batch_size=25)

    killed = 0
    for round_ in range(2):
        victim = processes.start(f"victim-{round_}")

        async def claimed() -> bool:
            return bool(await system.fetchval("SELECT count(*) FROM all_items WHERE state = 'running'"))

        await wait_for(claimed, timeout=30, what="a batch claimed by the victim")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed += 1
        # Its claims are still there: nobody else holds them.
        assert await system.fetchval("SELECT count(*) FROM all_items WHERE state = 'running'") > 0

    processes.start("survivor")

    async def all_processed() -> bool:
        return await system.fetchval("SELECT count(*) FROM requests WHERE processed") == requests

    await wait_for(all_processed, timeout=90, interval=0.25, what="every request processed after the kills")
    rows = await system.fetch("SELECT number, state, result, attempts, lease_until FROM all_items")
    assert len(rows) == requests * per_request
    for row in rows:
        assert row["state"] == "done", dict(row)
        assert row["result"] == str(row["number"] + 1)
        assert row["lease_until"] is None
        assert 1 <= row["attempts"] <= killed + 1
    # The killed batches were recomputed (attempts > 1) but written once: one row, one result each.
    assert await system.fetchval("SELECT count(*) FROM all_items WHERE attempts > 1") > 0
    assert await system.fetchval("SELECT count(*) FROM tasks WHERE state = 'running'") == 0


@pytest.mark.slow
async def test_sigkill_mid_locked_batch_hands_the_items_back_at_once(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    processes: ProcessorProcesses,
    tmp_path: Path,
) -> None:
    """Items held by row locks are never marked running: killing their processor ends its transaction,
    and they are pending again at once, the interrupted attempt not counted (a "lock" processing is one
    that cannot be what killed the processor)."""
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)
    numbers = list(range(50))
    await system.submit({"rid": "locked", "items": [{"number": n, "job": "slow_locked"} for n in numbers]})
    await system.stop_processors_once_recorded(len(numbers))
    effects = tmp_path / "effects.log"
    victim = processes.start("victim")
    await system.publish_poll("slow_locked", batch_size=25)

    async def started() -> bool:
        return effects.exists() and effects.read_text().startswith("-")

    await wait_for(started, timeout=30, what="a locked batch being computed")
    assert await system.fetchval("SELECT count(*) FROM all_items WHERE state <> 'pending'") == 0
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    lines = effects.read_text().split()
    assert lines and all(line.startswith("-") for line in lines)  # killed before any result
    rows = await system.fetch("SELECT state, attempts, claim_task_id FROM all_items")
    assert all(r["state"] == "pending" and r["attempts"] == 0 and r["claim_task_id"] is None for r in rows)

    processes.start("survivor")
    for _ in range(2):
        await system.publish_poll("slow_locked", batch_size=25)

    async def processed() -> bool:
        return bool(await system.fetchval("SELECT processed FROM requests WHERE rid = 'locked'"))

    await wait_for(processed, timeout=60, interval=0.25, what="the request processed by the survivor")
    rows = await system.fetch("SELECT number, state, result, attempts, lease_until FROM all_items")
    assert sorted(r["number"] for r in rows) == numbers
    for row in rows:
        assert (row["state"], row["result"], row["attempts"], row["lease_until"]) == (
            "done",
            str(row["number"] + 1),
            1,
            None,
        )
