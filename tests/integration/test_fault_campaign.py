"""The fault campaign: at least 5,000 requests of immediate and batch work while processors are SIGKILLed
mid-batch (several times), NATS and PostgreSQL restart and the scheduler leader is SIGKILLed (twice).

At the end every request the gateway accepted is processed, every item has exactly one result effect —
counted in an append-only table that a trigger fills on every result write, not only from final values —
nothing is stuck, and /v1/stats agrees. The figures go to stdout (and docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from squall.cli.embedded import NatsServer, PostgresServer
from squall.core.settings import Settings
from tests.integration.harness import (
    ProcessorProcesses,
    ServiceProcesses,
    SteadyLoad,
    System,
    make_settings,
    plain_dsn,
    wait_for,
)

MODULE = "tests.integration.effect_processings"
REQUESTS = 5_000
ITEMS_PER_REQUEST = 4
PROCESSORS = 3
SCHEDULERS = 2

# Test-only instrumentation: every write of a result (insert of a finished item, or an update that gives an
# item its result) appends a row. Two writes for one item — a duplicate effect — would show as two rows.
EFFECTS_SQL = """
CREATE TABLE effects (
    request_task_id uuid NOT NULL,
    position int NOT NULL,
    result jsonb,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION record_effect() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'done' AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'done'
                               OR OLD.result IS DISTINCT FROM NEW.result
                               OR OLD.updated_at IS DISTINCT FROM NEW.updated_at) THEN
        INSERT INTO effects (request_task_id, position, result)
        VALUES (NEW.request_task_id, NEW.position, NEW.result);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER items_effects AFTER INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION record_effect();
"""


def expected_result(job: str, number: int) -> int:
    return number + 2 if job == "sum" else number * 3  # builtin sum per item; the campaign batch triples


class Campaign:
    """Injects the faults and times each recovery."""

    def __init__(
        self,
        system: System,
        load: SteadyLoad,
        processors: ProcessorProcesses,
        schedulers: ServiceProcesses,
    ) -> None:
        self.system = system
        self.load = load
        self.processors = processors
        self.schedulers = schedulers
        self.faults: list[dict[str, Any]] = []
        self.spawned = 0

    async def intake_flows(self, what: str, since: float) -> float:
        before = len(self.load.accepted)

        async def grew() -> bool:
            return len(self.load.accepted) > before + 5

        await wait_for(grew, timeout=60, interval=0.05, what=f"intake after {what}")
        return time.monotonic() - since

    async def kill_processor_mid_batch(self) -> None:
        """SIGKILL a processor while batches are claimed; time until the items it held are done."""

        async def claimed() -> list[asyncpg.Record]:
            return await self.system.fetch(
                "SELECT request_task_id, position FROM all_items WHERE state = 'running'"
            )

        held = await wait_for(claimed, timeout=60, interval=0.02, what="a batch in flight")
        victim = next(name for name, p in self.processors.by_name.items() if p.poll() is None)
        self.processors.kill(victim)
        killed_at = time.monotonic()
        self.spawned += 1
        self.processors.start(f"processor-r{self.spawned}")  # the Deployment replaces it
        keys = [(r["request_task_id"], r["position"]) for r in held]

        async def reclaimed() -> bool:
            left = await self.system.fetchval(
                "SELECT count(*) FROM all_items i JOIN unnest($1::uuid[], $2::int[]) AS k(t, p) "
                "ON i.request_task_id = k.t AND i.position = k.p WHERE i.state <> 'done'",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            return bool(left == 0)

        await wait_for(reclaimed, timeout=90, interval=0.1, what="the killed processor's items done")
        self.faults.append(
            {
                "fault": "SIGKILL processor mid-batch",
                "victim": victim,
                "items_in_flight": len(keys),
                "recovered_seconds": round(time.monotonic() - killed_at, 2),
                "measured": "until every item claimed at the kill is done",
            }
        )

    async def restart(self, server: NatsServer | PostgresServer, what: str) -> None:
        """Stop the server for 2 s under load, start it again, time until intake flows again."""
        server.stop()
        await asyncio.sleep(2)
        server.start()
        started = time.monotonic()
        seconds = await self.intake_flows(f"the {what} restart", started)
        self.faults.append(
            {
                "fault": f"restart {what} (down 2 s)",
                "recovered_seconds": round(seconds, 2),
                "measured": "from the restart until the gateway accepts requests again",
            }
        )

    async def leader(self) -> str | None:
        return await self.system.fetchval(  # type: ignore[no-any-return]
            "SELECT holder FROM scheduler_leader WHERE expires_at > now()"
        )

    async def kill_scheduler_leader(self) -> None:
        """SIGKILL the leading scheduler; time until another replica leads and a batch tick is emitted."""
        victim = await wait_for(self.leader, timeout=30, what="a scheduler leader")
        epoch = await self.system.fetchval("SELECT epoch FROM scheduler_leader")
        self.schedulers.kill(victim)
        killed_at = time.monotonic()
        self.spawned += 1
        self.schedulers.start("scheduler", f"scheduler-r{self.spawned}")

        async def ticking() -> bool:
            newest = await self.system.fetchval("SELECT max(leader_epoch) FROM schedule_ticks")
            return bool(newest is not None and newest > epoch)

        await wait_for(ticking, timeout=60, interval=0.1, what="a tick from the next leader")
        self.faults.append(
            {
                "fault": "SIGKILL scheduler leader",
                "victim": victim,
                "recovered_seconds": round(time.monotonic() - killed_at, 2),
                "measured": "until the next leader emits a tick (lease 3 s)",
            }
        )


@pytest.mark.slow
async def test_fault_campaign(
    nats_server: NatsServer | None,
    own_postgres: PostgresServer,
    system_factory: Callable[..., Awaitable[System]],
    tmp_path: Path,
) -> None:
    assert nats_server is not None, "the campaign restarts its own NATS server"
    await _install_effects_table(own_postgres)
    settings = make_settings(
        nats_server.url,
        own_postgres.url,
        processing_modules=[MODULE],
        processings={"sum": {"mode": "immediate"}},
        gateway={"publish_timeout_seconds": 2.0},
    )
    system = await system_factory(settings, processors=0)  # the gateway; the workers are OS processes
    effect_log = tmp_path / "computations.log"
    processors, schedulers = _worker_processes(settings, effect_log, tmp_path)
    load = SteadyLoad(system.base_url, jobs=("sum", "campaign"), items=ITEMS_PER_REQUEST, pause=0.0)
    campaign = Campaign(system, load, processors, schedulers)
    started = time.monotonic()
    await _inject_faults_under_load(campaign, nats_server, own_postgres)
    load_seconds = time.monotonic() - started
    try:
        accepted = dict(load.accepted)
        drained = await _wait_every_accepted_request_processed(system, accepted)
        lost, items = await _check_nothing_lost_extra_or_half_written(system, accepted)
        duplicated = await _check_one_result_effect_per_item(system, items)
        await _check_nothing_stuck(system, accepted, items)
        reclaimed, recomputed = await _check_kills_hit_claimed_work(system, effect_log, items)
        batch_items = sum(1 for i in items if i["job"] == "campaign")
        report = {
            "requests_accepted": len(accepted),
            "items": len(items),
            "immediate_items": len(items) - batch_items,
            "batch_items": batch_items,
            "lost": lost,
            "duplicated_effects": duplicated,
            "batch_items_claimed_again_after_a_kill": reclaimed,
            "batch_item_computations_repeated_after_a_kill": recomputed,
            "client_retries_during_outages": load.refusals,
            "load_seconds": round(load_seconds, 1),
            "drain_seconds_after_load": round(drained, 1),
            "faults": campaign.faults,
        }
        print("\nfault campaign:", json.dumps(report, indent=2))
    finally:
        processors.stop_all()
        schedulers.stop_all()


_Accepted = dict[str, tuple[str, list[int]]]  # rid -> (job, numbers), as SteadyLoad records them


async def _install_effects_table(postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(plain_dsn(postgres.url))
    await conn.execute(EFFECTS_SQL)
    await conn.close()


def _worker_processes(
    settings: Settings, effect_log: Path, log_dir: Path
) -> tuple[ProcessorProcesses, ServiceProcesses]:
    """The processors and schedulers, as OS processes (none started yet)."""
    immediate_sum = {"SQUALL_PROCESSINGS__SUM__MODE": "immediate"}
    processors = ProcessorProcesses(settings, effect_log, log_dir)
    processors.env.update(immediate_sum)
    schedulers = ServiceProcesses(
        settings,
        log_dir,
        SQUALL_PROCESSING_MODULES=MODULE,
        SQUALL_SCHEDULER__DEFAULT_INTERVAL_SECONDS="0.2",
        SQUALL_SCHEDULER__LEASE_SECONDS="3",
        **immediate_sum,
    )
    return processors, schedulers


async def _inject_faults_under_load(
    campaign: Campaign, nats_server: NatsServer, postgres: PostgresServer
) -> None:
    """Start the workers and the load, inject every fault, and stop the load once enough was accepted."""
    load = campaign.load
    clients: list[asyncio.Task[None]] = []
    try:
        for index in range(PROCESSORS):
            campaign.processors.start(f"processor-{index}")
        for index in range(SCHEDULERS):
            campaign.schedulers.start("scheduler", f"scheduler-{index}")
        await wait_for(campaign.leader, timeout=30, what="a scheduler leader")
        clients = [asyncio.create_task(load.client(i)) for i in range(12)]
        await asyncio.sleep(3)
        await campaign.kill_processor_mid_batch()
        await campaign.restart(nats_server, "NATS")  # its JetStream store survives on disk
        await campaign.kill_processor_mid_batch()
        await campaign.kill_scheduler_leader()
        await campaign.restart(postgres, "PostgreSQL")
        await campaign.kill_processor_mid_batch()
        await campaign.kill_scheduler_leader()
        await campaign.kill_processor_mid_batch()

        async def enough() -> bool:
            return len(load.accepted) >= REQUESTS

        await wait_for(enough, timeout=300, interval=0.5, what=f"{REQUESTS} requests accepted")
    finally:
        load.running = False
        await asyncio.gather(*clients, return_exceptions=True)


async def _wait_every_accepted_request_processed(system: System, accepted: _Accepted) -> float:
    """How many seconds it took."""

    async def all_processed() -> bool:
        done = await system.fetchval("SELECT count(*) FROM requests WHERE processed")
        return bool(done == len(accepted))

    drain_started = time.monotonic()
    await wait_for(all_processed, timeout=180, interval=0.5, what="every accepted request processed")
    return time.monotonic() - drain_started


async def _check_nothing_lost_extra_or_half_written(
    system: System, accepted: _Accepted
) -> tuple[int, list[asyncpg.Record]]:
    """Every accepted request, and only those, processed with every item done and right; the number of
    requests lost and every item."""
    rids = {r["rid"] for r in await system.fetch("SELECT rid FROM requests WHERE processed")}
    lost = len(set(accepted) - rids)
    assert lost == 0 and rids == set(accepted), (len(rids), len(accepted))
    items = await system.fetch(
        "SELECT r.rid, i.position, i.number, i.job, i.state, i.result, i.lease_until "
        "FROM all_items i JOIN requests r ON r.task_id = i.request_task_id"
    )
    assert len(items) == ITEMS_PER_REQUEST * len(accepted)
    for item in items:
        job, numbers = accepted[item["rid"]]
        assert item["job"] == job and item["number"] == numbers[item["position"]], dict(item)
        assert item["state"] == "done" and item["lease_until"] is None, dict(item)
        assert item["result"] == str(expected_result(job, item["number"])), dict(item)
    return lost, items


async def _check_one_result_effect_per_item(system: System, items: list[asyncpg.Record]) -> int:
    """The items written more than once (none)."""
    effects = await system.fetch("SELECT request_task_id, position, count(*) AS n FROM effects GROUP BY 1, 2")
    duplicated = sum(1 for e in effects if e["n"] > 1)
    assert duplicated == 0 and len(effects) == len(items)
    return duplicated


async def _check_nothing_stuck(system: System, accepted: _Accepted, items: list[asyncpg.Record]) -> None:
    """No task running or queued for long, no dead task, and /v1/stats counts what the tables hold."""

    async def settled() -> bool:
        busy = await system.fetchval("SELECT count(*) FROM tasks WHERE state IN ('running', 'queued')")
        return bool(busy == 0)

    await wait_for(settled, timeout=60, interval=0.5, what="no task left running or queued")
    assert await system.fetchval("SELECT count(*) FROM tasks WHERE state = 'dead'") == 0

    async def counted() -> dict[str, Any] | None:  # /v1/stats is cached for a second
        stats: dict[str, Any] = (await system.client.get("/v1/stats")).json()
        requests = stats["requests"]
        return stats if requests["accepted"] == requests["processed"] == len(accepted) else None

    stats = await wait_for(counted, what="/v1/stats agreeing")
    for job in ("sum", "campaign"):
        per_job = sum(1 for i in items if i["job"] == job)
        assert stats["items"][job] == {"pending": 0, "done": per_job, "failed": 0}, stats


async def _check_kills_hit_claimed_work(
    system: System, effect_log: Path, items: list[asyncpg.Record]
) -> tuple[int, int]:
    """Some items were claimed again after their lease ran out, and some batches were computed twice (the
    effect log) — yet written once (the effects table); the items claimed again, the repeated computations."""
    reclaimed: int = await system.fetchval("SELECT count(*) FROM all_items WHERE attempts > 1")
    assert reclaimed > 0
    # A small file read once everything is processed: blocking is harmless here, as elsewhere in tests/.
    computed = Counter(int(line) for line in effect_log.read_text().split())  # noqa: ASYNC240
    recomputed = sum(n - 1 for n in computed.values())
    assert set(computed) == {i["number"] for i in items if i["job"] == "campaign"}
    return reclaimed, recomputed
