"""PostgreSQL's primary SIGKILLed under load and its synchronous standby promoted: nothing accepted is lost.

Squall's services run as OS processes (a gateway, two processors, a scheduler) on one NATS and a replicated
PostgreSQL (``postgres_pair.py``: a primary and a synchronous hot standby), reached through a URL listing
both hosts with ``target_session_attrs=read-write``. Clients submit immediate (``sum``) and batch
(``campaign``) requests, retrying the same rid on a 503 or a failed connection; the scheduler ticks and
checks a dependency the batch processing needs. Midway the primary is SIGKILLed (its whole process group)
and, two seconds later, the standby is promoted, as an operator or a failover manager would. The services
are not told: they must find the new primary by themselves.

At the end every accepted request is processed once with its results (an effects table, filled by a
trigger, created before the failover and so replicated), the requests accepted in the last second before
the kill among them, no answer but 200/202 and 503 with Retry-After, nothing stuck, /v1/stats agreeing.
The figures go to stdout (and docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from squall.cli.embedded import NatsServer, free_port
from squall.core import migrate
from tests.integration.harness import ProcessorProcesses, ServiceProcesses, make_settings, wait_for
from tests.integration.test_fault_campaign import EFFECTS_SQL, expected_result
from tests.multinode.postgres_pair import PostgresPair

MODULE = "tests.integration.effect_processings"
REQUESTS = 5_000
ITEMS_PER_REQUEST = 4
CLIENTS = 12
KILL_AFTER = 1_500  # requests accepted before the primary is killed
PROMOTE_AFTER_SECONDS = 2.0  # the failover manager's reaction time


@dataclass
class Load:
    """HTTP clients with their own rids, each request retried (same rid) until accepted; every answer kept."""

    base_url: str
    accepted: dict[str, tuple[str, list[int], float]] = field(default_factory=dict)  # rid -> job, numbers, t
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (time, "503" or the error's type)
    unexpected: list[str] = field(default_factory=list)  # any other answer, or a 503 without Retry-After
    running: bool = True

    async def client(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as http:
            sequence = 0
            while self.running:
                rid = f"c{index}-{sequence}"
                job = ("sum", "campaign")[sequence % 2]
                numbers = [(index * 1_000_000 + sequence) * 100 + i for i in range(ITEMS_PER_REQUEST)]
                body = {"rid": rid, "items": [{"number": n, "job": job} for n in numbers]}
                while self.running:
                    try:
                        response = await http.post("/v1/requests", json=body)
                    except httpx.HTTPError as error:
                        self.refusals.append((time.monotonic(), type(error).__name__))
                        await asyncio.sleep(0.2)
                        continue
                    if response.status_code in (200, 202):
                        self.accepted[rid] = (job, numbers, time.monotonic())
                        break
                    if response.status_code != 503 or "Retry-After" not in response.headers:
                        self.unexpected.append(f"{rid}: {response.status_code} {response.text[:300]}")
                    self.refusals.append((time.monotonic(), str(response.status_code)))
                    await asyncio.sleep(0.2)
                sequence += 1


class Cluster:
    """The services as OS processes on one NATS and the replicated PostgreSQL."""

    def __init__(self, nats_server: NatsServer, pair: PostgresPair, log_dir: Path) -> None:
        self.pair = pair
        self.settings = make_settings(nats_server.url, pair.url)
        common = {
            "SQUALL_PROCESSING_MODULES": MODULE,
            "SQUALL_PROCESSINGS__SUM__MODE": "immediate",
            # The batch processing needs a dependency the scheduler's leader checks every half second.
            "SQUALL_DEPENDENCIES__BROKER__KIND": "tcp",
            "SQUALL_DEPENDENCIES__BROKER__TARGET": f"127.0.0.1:{nats_server.port}",
            "SQUALL_DEPENDENCIES__BROKER__INTERVAL_SECONDS": "0.5",
            "SQUALL_PROCESSINGS__CAMPAIGN__DEPENDENCIES": '["broker"]',
            "SQUALL_DATABASE_TIMEOUT_SECONDS": "5",
            "SQUALL_AUTH__REQUIRED": "false",
        }
        self.gateway_port = free_port()
        self.gateway = ServiceProcesses(
            self.settings, log_dir, SQUALL_GATEWAY__PORT=str(self.gateway_port), **common
        )
        self.processors = ProcessorProcesses(self.settings, log_dir / "computations.log", log_dir)
        self.processors.env.update(common)
        self.scheduler = ServiceProcesses(
            self.settings,
            log_dir,
            SQUALL_SCHEDULER__DEFAULT_INTERVAL_SECONDS="0.2",
            SQUALL_SCHEDULER__LEASE_SECONDS="3",
            **common,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    async def start(self) -> None:
        self.gateway.start("gateway", "gateway")
        for index in range(2):
            self.processors.start(f"processor-{index}")
        self.scheduler.start("scheduler", "scheduler")

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2.0) as http:
                    return (await http.get(f"{self.base_url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(ready, timeout=60, interval=0.1, what="the gateway ready")
        await wait_for(self.leader, timeout=60, what="a scheduler leader")

    def stop(self) -> None:
        for services in (self.gateway, self.processors, self.scheduler):
            services.stop_all()

    def exited(self) -> dict[str, int | None]:
        return {
            name: process.poll()
            for services in (self.gateway, self.processors, self.scheduler)
            for name, process in services.by_name.items()
            if process.poll() is not None
        }

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.pair.dsn)
        try:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return (await self.fetch(sql, *args))[0][0]

    async def leader(self) -> str | None:
        return await self.fetchval(  # type: ignore[no-any-return]
            "SELECT holder FROM scheduler_leader WHERE expires_at > now()"
        )


@pytest.mark.slow
@pytest.mark.multinode
async def test_primary_killed_under_load_and_standby_promoted(
    nats_server: NatsServer, postgres_pair: PostgresPair, tmp_path: Path
) -> None:
    pair = postgres_pair
    await migrate.upgrade_async(make_settings(nats_server.url, pair.url))
    conn = await asyncpg.connect(pair.dsn)
    await conn.execute(EFFECTS_SQL)  # on the primary, replicated to the standby like every table
    await conn.close()
    cluster = Cluster(nats_server, pair, tmp_path)
    load = Load(cluster.base_url)
    clients: list[asyncio.Task[None]] = []
    try:
        await cluster.start()
        started = time.monotonic()
        clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]

        async def enough(n: int) -> bool:
            return len(load.accepted) >= n

        await wait_for(lambda: enough(KILL_AFTER), timeout=120, interval=0.02, what="load before the kill")
        old_primary = pair.primary.port
        pair.kill_primary()
        killed_at = time.monotonic()
        await asyncio.sleep(PROMOTE_AFTER_SECONDS)  # the fault's timing, not a synchronisation
        pair.promote()
        promoted_at = time.monotonic()
        promoted_db_at = await cluster.fetchval("SELECT clock_timestamp()")
        assert await cluster.fetchval("SELECT inet_server_port()") == pair.primary.port != old_primary

        async def accepted_after_promotion() -> float | None:
            return min((t for _, _, t in load.accepted.values() if t > promoted_at), default=None)

        first_after = await wait_for(
            accepted_after_promotion, timeout=60, interval=0.02, what="a submission accepted after promotion"
        )
        await wait_for(lambda: enough(REQUESTS), timeout=180, interval=0.2, what=f"{REQUESTS} accepted")
    finally:
        load.running = False
        await asyncio.gather(*clients, return_exceptions=True)
    load_stopped = time.monotonic()
    try:
        assert load.unexpected == [], load.unexpected[:10]
        assert cluster.exited() == {}, "a service exited"
        await _wait_all_processed(cluster, len(load.accepted))
        drained = time.monotonic()
        items = await _check_each_accepted_request_processed_once(cluster, load)
        last_second = await _check_last_second_before_kill(cluster, load, killed_at, promoted_db_at)
        await _check_nothing_stuck(cluster, load, items)
        outage = [t for t, _ in load.refusals if t >= killed_at]
        report = {
            "requests_accepted": len(load.accepted),
            "items": len(items),
            "lost": 0,
            "duplicated_effects": 0,
            "refusals_seen_by_clients": dict(Counter(kind for _, kind in load.refusals)),
            "refusals_before_the_kill": len(load.refusals) - len(outage),
            "refused_from_kill_seconds": round(max(outage) - killed_at, 2) if outage else 0.0,
            "first_refusal_after_kill_seconds": round(min(outage) - killed_at, 2) if outage else None,
            "kill_to_promotion_seconds": round(promoted_at - killed_at, 2),
            "kill_to_first_accepted_after_promotion_seconds": round(first_after - killed_at, 2),
            "promotion_to_first_accepted_seconds": round(first_after - promoted_at, 2),
            "accepted_in_last_second_before_kill": last_second,
            "load_seconds": round(load_stopped - started, 1),
            "backlog_drained_seconds_after_load": round(drained - load_stopped, 1),
            "backlog_drained_seconds_after_kill": round(drained - killed_at, 1),
        }
        print("\npostgres failover:", json.dumps(report, indent=2))
    finally:
        cluster.stop()


async def _wait_all_processed(cluster: Cluster, accepted: int) -> None:
    async def all_processed() -> bool:
        return bool(await cluster.fetchval("SELECT count(*) FROM requests WHERE processed") == accepted)

    await wait_for(all_processed, timeout=120, interval=0.5, what="every accepted request processed")


async def _check_each_accepted_request_processed_once(cluster: Cluster, load: Load) -> list[asyncpg.Record]:
    """Every accepted request, and only those, processed with every item done and right, each item's
    result written once (the effects table); every item."""
    rids = {r["rid"] for r in await cluster.fetch("SELECT rid FROM requests WHERE processed")}
    assert rids == set(load.accepted), (len(rids), len(load.accepted))
    items = await cluster.fetch(
        "SELECT r.rid, i.request_task_id, i.position, i.number, i.job, i.state, i.result, i.lease_until "
        "FROM all_items i JOIN requests r ON r.task_id = i.request_task_id"
    )
    assert len(items) == ITEMS_PER_REQUEST * len(load.accepted)
    for item in items:
        job, numbers, _ = load.accepted[item["rid"]]
        assert item["job"] == job and item["number"] == numbers[item["position"]], dict(item)
        assert item["state"] == "done" and item["lease_until"] is None, dict(item)
        assert item["result"] == str(expected_result(job, item["number"])), dict(item)
    effects = await cluster.fetch(
        "SELECT request_task_id, position, count(*) AS n FROM effects GROUP BY 1, 2"
    )
    assert [dict(e) for e in effects if e["n"] > 1] == []
    assert {(e["request_task_id"], e["position"]) for e in effects} == {
        (i["request_task_id"], i["position"]) for i in items
    }
    return items


async def _check_last_second_before_kill(
    cluster: Cluster, load: Load, killed_at: float, promoted_db_at: Any
) -> dict[str, int]:
    """The requests answered 202/200 in the last second before the kill are all processed, some of them
    only on the promoted standby (their acceptance reached it by synchronous replication)."""
    rids = [rid for rid, (_, _, t) in load.accepted.items() if killed_at - 1.0 <= t < killed_at]
    assert rids, "no request accepted in the last second before the kill"
    rows = await cluster.fetch(
        "SELECT rid, processed, processed_at >= $2 AS after FROM requests WHERE rid = ANY($1::text[])",
        rids,
        promoted_db_at,
    )
    assert len(rows) == len(rids) and all(r["processed"] for r in rows)
    after = sum(1 for r in rows if r["after"])
    assert after > 0, "every request of the last second was processed before the kill"
    batch = sum(1 for rid in rids if load.accepted[rid][0] == "campaign")
    return {"requests": len(rids), "batch": batch, "processed_after_promotion": after}


async def _check_nothing_stuck(cluster: Cluster, load: Load, items: list[asyncpg.Record]) -> None:
    """No task left running or queued, none dead, ticks and dependency checks after the promotion, and
    /v1/stats counting what the tables hold."""

    async def settled() -> bool:
        busy = await cluster.fetchval("SELECT count(*) FROM tasks WHERE state IN ('running', 'queued')")
        return bool(busy == 0)

    await wait_for(settled, timeout=60, interval=0.5, what="no task left running or queued")
    assert await cluster.fetchval("SELECT count(*) FROM tasks WHERE state = 'dead'") == 0
    checked = await cluster.fetch(
        "SELECT state, last_checked_at > now() - interval '5 s' AS recent FROM dependencies"
    )
    assert [dict(c) for c in checked] == [{"state": "up", "recent": True}]

    async def counted() -> dict[str, Any] | None:  # /v1/stats is cached for a second
        async with httpx.AsyncClient(base_url=cluster.base_url, timeout=10.0) as http:
            stats: dict[str, Any] = (await http.get("/v1/stats")).json()
        requests = stats["requests"]
        return stats if requests["accepted"] == requests["processed"] == len(load.accepted) else None

    stats = await wait_for(counted, what="/v1/stats agreeing")
    for job in ("sum", "campaign"):
        per_job = sum(1 for i in items if i["job"] == job)
        assert stats["items"][job] == {"pending": 0, "done": per_job, "failed": 0}, stats
