"""Under steady load, restart NATS and PostgreSQL: every accepted request is processed, each item once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from squall.cli.embedded import NatsServer, PostgresServer
from tests.integration.harness import LogRecords, SteadyLoad, System, make_settings, wait_for


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


def _signal_postgres(server: PostgresServer, sig: signal.Signals) -> None:
    """Signal the postmaster and every backend: SIGSTOP freezes the whole server (connections stay open)."""
    assert server.process is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in [server.process.pid, *map(int, children)]:
        os.kill(pid, sig)


async def test_a_database_that_stops_answering_gets_503s_not_a_hang(
    nats_url: str,
    own_postgres: PostgresServer,
    system_factory: Callable[..., Awaitable[System]],
    records: LogRecords,
) -> None:
    """PostgreSQL frozen (SIGSTOP: its connections open, nothing answered, as behind a network that drops
    packets): a submission and the stats are answered 503 once ``database_timeout_seconds`` has passed,
    not held until TCP gives up; nothing is half-written, and once it thaws intake and processing go on."""
    settings = make_settings(
        nats_url,
        own_postgres.url,
        database_timeout_seconds=2.0,
        processings={"sum": {"mode": "immediate"}},
    )
    system = await system_factory(settings, processors=1)
    await system.submit({"rid": "before", "items": [{"number": 1, "job": "sum"}]})
    await system.wait_processed("before")
    await asyncio.sleep(1.2)  # the gateway's stats cache (a second) has expired: /v1/stats must ask
    _signal_postgres(own_postgres, signal.SIGSTOP)
    try:
        started = time.monotonic()
        submitted, stats = await asyncio.wait_for(
            asyncio.gather(
                system.client.post(
                    "/v1/requests", json={"rid": "frozen", "items": [{"number": 2, "job": "sum"}]}
                ),
                system.client.get("/v1/stats"),
            ),
            timeout=20,
        )
        waited = time.monotonic() - started
    finally:
        _signal_postgres(own_postgres, signal.SIGCONT)
    for response in (submitted, stats):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"]
    assert waited >= 2.0  # the database was waited for, then given up on
    # The log names the cause (a timeout's own message is empty).
    assert records.find("POST /v1/requests: dependency unavailable: TimeoutError")

    # A client retries what was refused. Its statement may have reached the database before the freeze
    # and run on thawing (too late for the cancel): the retry then finds it, publishes it again, and
    # either way it is recorded and processed once.
    retried = await system.client.post(
        "/v1/requests", json={"rid": "frozen", "items": [{"number": 2, "job": "sum"}]}
    )
    assert retried.status_code in (200, 202), retried.text
    await system.submit({"rid": "after", "items": [{"number": 3, "job": "sum"}]})
    for rid in ("frozen", "after"):
        await system.wait_processed(rid)
    rows = await system.fetch("SELECT number, state, result FROM all_items ORDER BY number")
    assert [(r["number"], r["state"], r["result"]) for r in rows] == [
        (1, "done", "3"),
        (2, "done", "4"),
        (3, "done", "5"),
    ]
