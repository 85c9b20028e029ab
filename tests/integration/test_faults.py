"""Under steady load, restart NATS and PostgreSQL: every accepted request is processed, each item once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from squall.core.embedded import NatsServer, PostgresServer
from tests.integration.harness import SteadyLoad, System, make_settings, wait_for


@pytest.mark.slow
async def test_restarts_of_nats_and_postgres_under_load(
    nats_server: NatsServer | None,
    own_postgres: PostgresServer,
    system_factory: Callable[..., Awaitable[System]],
) -> None:
    assert nats_server is not None, "this test restarts its own NATS server"
    settings = make_settings(
        nats_server.url,
        own_postgres.url,
        processings={"sum": {"mode": "immediate"}},
        gateway={"publish_timeout_seconds": 2.0},
    )
    system = await system_factory(settings, processors=2)
    await system.start_scheduler()
    load = SteadyLoad(system.base_url, jobs=("mul", "sum"), items=5)
    clients = [asyncio.create_task(load.client(i)) for i in range(8)]
    recovered: dict[str, float] = {}

    async def restart(server: NatsServer | PostgresServer, what: str) -> None:
        """Stop the server for 2 s under load, start it again, and time until intake flows again."""
        server.stop()
        await asyncio.sleep(2)
        server.start()
        started, before = time.monotonic(), len(load.accepted)
        await wait_for(lambda: _grew(load, before), timeout=30, what=f"intake after the {what} restart")
        recovered[what] = time.monotonic() - started
        await asyncio.sleep(3)

    try:
        await asyncio.sleep(3)
        await restart(nats_server, "nats")  # its JetStream store survives on disk
        await restart(own_postgres, "postgres")
    finally:
        load.running = False
        await asyncio.gather(*clients)

    async def all_processed() -> bool:
        done = await system.fetchval("SELECT count(*) FROM requests WHERE processed")
        return bool(done == len(load.accepted))

    await wait_for(all_processed, timeout=90, interval=0.5, what="every accepted request processed")
    rows = await system.fetch("SELECT rid FROM requests")
    assert {r["rid"] for r in rows} == set(load.accepted)  # nothing lost, nothing half-written
    items = await system.fetch("SELECT number, job, state, result FROM all_items")
    assert len(items) == 5 * len(load.accepted)
    for item in items:
        expected = item["number"] + 2 if item["job"] == "sum" else item["number"] * 2
        assert item["state"] == "done" and item["result"] == str(expected), dict(item)
    print(
        f"\nfaults: {len(load.accepted)} requests accepted, {load.refusals} refusals (503 or no answer, "
        f"retried), recovery seconds { ({k: round(v, 2) for k, v in recovered.items()}) }"
    )


async def _grew(load: SteadyLoad, before: int) -> bool:
    return len(load.accepted) > before + 5


async def test_a_broker_that_stops_reading_gets_503s_not_a_hang(
    nats_server: NatsServer | None,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
) -> None:
    """NATS frozen (SIGSTOP: connected, reading nothing): large submissions fill the client's buffer and the
    socket, and nats-py's flush waits on the broker, outside the ack timeout it is given. Every submission
    is still answered while NATS stays frozen: 503, nothing stored; intake resumes once it thaws. The
    refused events still reach JetStream once it does (they were in the client's buffer): a rid submitted
    again is a new message all the same, recorded at once, not dropped as their duplicate."""
    assert nats_server is not None and nats_server.process is not None, "this test freezes its own NATS"
    settings = make_settings(nats_server.url, database_url, gateway={"publish_timeout_seconds": 1.0})
    system = await system_factory(settings, processors=0)
    items = [{"number": n, "job": "sum"} for n in range(10_000)]  # ~290 KB per event
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    try:

        async def submit(index: int) -> int:
            response = await system.client.post("/v1/requests", json={"rid": f"big-{index}", "items": items})
            return response.status_code

        # 60 events of ~290 KB: more than nats-py's pending buffer (8 MB) and the socket together hold.
        statuses = await asyncio.wait_for(asyncio.gather(*(submit(i) for i in range(60))), timeout=25)
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    assert set(statuses) == {503}
    assert await system.fetchval("SELECT count(*) FROM requests") == 0

    async def accepted() -> bool:
        response = await system.client.post("/v1/requests", json={"rid": "after", "items": items[:1]})
        return response.status_code == 202

    await wait_for(accepted, timeout=30, what="intake after NATS thawed")
    await system.submit({"rid": "big-0", "items": items})
    await system.start_processor()

    async def recorded() -> bool:
        return bool((await system.request_state("big-0"))["recorded"])

    await wait_for(recorded, timeout=20, what="the rid submitted again recorded")
