"""SIGTERM: processors finish or hand back in-flight work and exit 0; the gateway drains first."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from squall.cli.embedded import free_port
from squall.core.settings import Settings
from tests.integration.harness import ProcessorProcesses, ServiceProcesses, System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def _backlog(system: System, requests: int = 4, per_request: int = 25) -> None:
    for r in range(requests):
        await system.submit(
            {
                "rid": f"g{r}",
                "items": [{"number": r * 100 + i, "job": "slow_record"} for i in range(per_request)],
            }
        )
    await system.stop_processors_once_recorded(requests * per_request)
    for _ in range(requests):
        await system.publish_poll("slow_record", batch_size=25)


@pytest.mark.slow
@pytest.mark.parametrize(("grace", "outcome"), [("20", "finished"), ("0.3", "handed back")])
async def test_processor_sigterm_exits_zero_and_loses_nothing(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    tmp_path: Path,
    grace: str,
    outcome: str,
) -> None:
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)
    await _backlog(system)
    processes = ProcessorProcesses(settings, tmp_path / "effects.log", tmp_path)
    try:
        first = processes.start("first", SQUALL_PROCESSOR__SHUTDOWN_GRACE_SECONDS=grace)

        async def claimed() -> bool:
            return bool(await system.fetchval("SELECT count(*) FROM all_items WHERE state = 'running'"))

        await wait_for(claimed, timeout=30, what="a batch in flight")
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 30)
        assert code == 0
        running = await system.fetchval("SELECT count(*) FROM all_items WHERE state = 'running'")
        if outcome == "finished":
            assert running == 0  # the batch in flight was completed before exiting
        processes.start("second")

        async def all_processed() -> bool:
            return bool(await system.fetchval("SELECT bool_and(processed) FROM requests"))

        await wait_for(all_processed, timeout=60, interval=0.25, what="every request processed")
        assert await system.fetchval("SELECT count(*) FROM all_items WHERE state <> 'done'") == 0
    finally:
        processes.stop_all()


@pytest.mark.slow
async def test_gateway_sigterm_reports_not_ready_then_exits_zero(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    services = ServiceProcesses(
        settings,
        tmp_path,
        SQUALL_GATEWAY__PORT=str(port),
        SQUALL_GATEWAY__HOST="127.0.0.1",
        SQUALL_GATEWAY__SHUTDOWN_DELAY_SECONDS="1.5",
        SQUALL_AUTH__REQUIRED="false",
    )
    gateway = services.start("gateway", "gateway")
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(ready, timeout=30, what="gateway ready")
            gateway.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                answer = await client.get("/readyz")
                return answer.status_code == 503 and "shutting down" in answer.json()["problems"]

            await wait_for(draining, timeout=5, what="not ready while draining")
            # Still serving meanwhile: a request in the drain window is answered.
            accepted = await client.post("/v1/requests", json={"items": [{"number": 1, "job": "sum"}]})
            assert accepted.status_code == 202
        assert await asyncio.to_thread(gateway.wait, 30) == 0
        assert "gateway running on uvloop's event loop" in (tmp_path / "gateway.log").read_text()
    finally:
        services.stop_all()


@pytest.mark.parametrize("role", ["gateway", "processor", "scheduler"])
def test_sigterm_while_nats_is_unreachable_ends_the_wait_for_it(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    # Nothing listens there: the first connection is retried for 60 s (the default window) unless stopped.
    services = ServiceProcesses(
        settings,
        tmp_path,
        SQUALL_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        SQUALL_GATEWAY__PORT=str(free_port()),
        SQUALL_AUTH__REQUIRED="false",
    )
    process = services.start(role, role)
    log = tmp_path / f"{role}.log"
    try:
        deadline = time.monotonic() + 30
        while b"connecting to NATS" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text()
        assert "stopped before NATS answered" in log.read_text()
    finally:
        services.stop_all()


@pytest.mark.slow
async def test_processor_sigterm_past_the_grace_hands_a_locked_batch_back(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    tmp_path: Path,
) -> None:
    """A ``claim="lock"`` batch cut short by the end of the grace period is rolled back: its items are
    pending, unattempted, and the next processor computes them once."""
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=1)
    await system.submit({"rid": "locked", "items": [{"number": n, "job": "slow_locked"} for n in range(25)]})
    await system.stop_processors_once_recorded(25)
    effects = tmp_path / "effects.log"
    processes = ProcessorProcesses(settings, effects, tmp_path)
    try:
        first = processes.start("first", SQUALL_PROCESSOR__SHUTDOWN_GRACE_SECONDS="0.3")
        await system.publish_poll("slow_locked", batch_size=25)

        async def computing() -> bool:
            return effects.exists() and effects.read_text().startswith("-")

        await wait_for(computing, timeout=30, what="a locked batch being computed")
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 30) == 0
        assert all(line.startswith("-") for line in effects.read_text().split())  # cut short
        # Still waiting in their chunk (claim="lock"), unattempted: nothing was written.
        assert await system.fetchval("SELECT count(*) FROM items") == 0
        assert await system.fetchval("SELECT sum(item_count) FROM item_chunks") == 25

        processes.start("second")
        await system.publish_poll("slow_locked", batch_size=25)

        async def processed() -> bool:
            return bool(await system.fetchval("SELECT processed FROM requests WHERE rid = 'locked'"))

        await wait_for(processed, timeout=60, interval=0.25, what="the request processed by the second")
        rows = await system.fetch("SELECT number, state, result, attempts FROM all_items")
        assert len(rows) == 25
        assert all(
            (r["state"], r["result"], r["attempts"]) == ("done", str(r["number"] + 1), 1) for r in rows
        )
    finally:
        processes.stop_all()
