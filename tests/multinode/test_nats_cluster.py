"""Squall on a three-node NATS JetStream cluster (streams of 3 replicas), its nodes failing under load.

The gateway, two processors and the scheduler run as OS processes with ``SQUALL_NATS_URL`` naming the three
nodes. HTTP clients submit requests of an immediate processing (``sum``) and a batch one (``campaign``, held
back by a tcp dependency that stays up), retrying the same rid on 503 or a lost connection, while: the
JetStream meta leader is SIGKILLed (restarted on its store once another leads), then the leader of the
``SQUALL_REQUESTS`` stream, then a follower; and last a node is frozen (SIGSTOP) for longer than the
cluster's Raft timeouts, then thawed (SIGCONT). Nothing is restarted by hand but the NATS nodes.

At the end every accepted request is processed once with its job's result (the effects table, as in
``test_fault_campaign.py``), clients saw only 200/202 and 503 with Retry-After, nothing is stuck, ticks and
dependency checks go on, /v1/stats agrees, and every service is still the process it was. Per fault, the
figures clients saw go to stdout (and docs/reliability.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import pytest

from squall.cli.embedded import NatsCluster, PostgresServer, free_port
from squall.core import events
from squall.core.settings import Settings
from tests.integration.harness import (
    ProcessorProcesses,
    ServiceProcesses,
    make_settings,
    plain_dsn,
    wait_for,
)
from tests.integration.test_fault_campaign import EFFECTS_SQL, MODULE, expected_result

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

REQUESTS = 5_000
ITEMS_PER_REQUEST = 4
CLIENTS = 12
# nats-server's Raft: heartbeats every 1 s, a follower campaigns after 4 to 9 s without one, a leader steps
# down after 10 s without a quorum (server/raft.go). A frozen node stays frozen a few seconds beyond.
FROZEN_SECONDS = 14.0
DEPENDENCY = "pg-port"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats")
    nodes.start()
    yield nodes
    nodes.stop()


@dataclass
class Load:
    """Clients submitting requests with their own rids, each retried (same rid) until accepted. Every
    attempt is noted with its time and outcome; answers other than 200/202 or 503 with Retry-After too."""

    base_url: str
    accepted: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # rid -> (job, numbers)
    accepted_at: dict[str, float] = field(default_factory=dict)
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, ok|503|connection)
    unexpected: list[str] = field(default_factory=list)
    running: bool = True

    async def client(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as http:
            sequence = 0
            while self.running:
                rid = f"c{index}-{sequence}"
                job = ("sum", "campaign")[sequence % 2]
                numbers = [(index * 1_000_000 + sequence) * 100 + i for i in range(ITEMS_PER_REQUEST)]
                body = {"rid": rid, "items": [{"number": n, "job": job} for n in numbers]}
                while True:
                    if await self._submit(http, rid, job, numbers, body):
                        break
                    await asyncio.sleep(0.2)  # the client's own back-off before its retry
                sequence += 1

    async def _submit(
        self, http: httpx.AsyncClient, rid: str, job: str, numbers: list[int], body: dict[str, Any]
    ) -> bool:
        try:
            response = await http.post("/v1/requests", json=body)
        except httpx.HTTPError:
            self.attempts.append((time.monotonic(), "connection"))
            return False
        if response.status_code in (200, 202):
            self.attempts.append((time.monotonic(), "ok"))
            self.accepted[rid] = (job, numbers)
            self.accepted_at[rid] = time.monotonic()
            return True
        self.attempts.append((time.monotonic(), "503"))
        if response.status_code != 503 or not response.headers.get("Retry-After"):
            self.unexpected.append(f"{response.status_code} {response.headers} {response.text[:200]}")
        return False

    def seen(self, since: float, until: float) -> dict[str, Any]:
        """What clients saw from ``since`` (the fault) to ``until`` (the fault over): the longest time without
        an acceptance (requests in flight at the fault may still be accepted just after it), when it ended,
        the 503s and the connection errors."""
        window = [(t, kind) for t, kind in self.attempts if since <= t <= until]
        accepted = [since] + [t for t, kind in window if kind == "ok"] + [until]
        gap_start, gap_end = max(itertools.pairwise(accepted), key=lambda pair: pair[1] - pair[0])
        return {
            "intake_interrupted_seconds": round(gap_end - gap_start, 2),
            "first_accepted_after_the_interruption_seconds": round(gap_end - since, 2),
            "answers_503": sum(1 for _, kind in window if kind == "503"),
            "connection_errors": sum(1 for _, kind in window if kind == "connection"),
            "accepted": sum(1 for _, kind in window if kind == "ok"),
        }


class Faults:
    """Injects the NATS node faults one after another and measures each."""

    def __init__(self, cluster: NatsCluster, load: Load, dsn: str) -> None:
        self.cluster = cluster
        self.load = load
        self.dsn = dsn
        self.report: list[dict[str, Any]] = []

    async def _leader(self, stream: str | None, other_than: str | None = None) -> str:
        def current() -> str | None:
            found = self.cluster.meta_leader() if stream is None else self.cluster.stream_leader(stream)
            return found if found != other_than else None

        async def agreed() -> str | None:
            return await asyncio.to_thread(current)

        what = "the meta leader" if stream is None else f"the leader of {stream}"
        return await wait_for(agreed, timeout=60, interval=0.1, what=what)

    async def _intake_flows(self, since: float) -> float:
        """Wait until clients get requests accepted again after ``since``; when the fifth one was."""

        async def flowing() -> float | None:
            after = sorted(t for t in self.load.accepted_at.values() if t >= since)
            return after[4] if len(after) >= 5 else None

        return await wait_for(flowing, timeout=90, interval=0.05, what="intake flowing again")

    async def _drained(self, accepted_before: float) -> float:
        """Wait until every request accepted before ``accepted_before`` is processed; when that was."""
        rids = [rid for rid, t in self.load.accepted_at.items() if t <= accepted_before]

        async def processed() -> bool:
            conn = await asyncpg.connect(self.dsn)
            try:
                done = await conn.fetchval(
                    "SELECT count(*) FROM requests WHERE processed AND rid = ANY($1::text[])", rids
                )
            finally:
                await conn.close()
            return bool(done == len(rids))

        await wait_for(processed, timeout=120, interval=0.2, what="the backlog drained")
        return time.monotonic()

    async def _finish(
        self, fault: str, victim: str, started: float, node_back: float, **figures: Any
    ) -> None:
        """Figures of a fault from ``started`` until intake flows and the node is back (``node_back``)."""
        recovered = await self._intake_flows(started)
        ended = max(recovered, node_back)
        drained = await self._drained(ended)
        seen = self.load.seen(started, ended)
        del seen["accepted"]
        self.report.append(
            {
                "fault": fault,
                "node": victim,
                **figures,
                **seen,
                "fault_over_seconds": round(ended - started, 2),
                "backlog_drained_seconds": round(drained - started, 2),
            }
        )

    async def kill_and_restart(self, fault: str, victim: str, stream: str | None) -> None:
        """SIGKILL node ``victim``; wait until another leads (``stream``'s group, or the meta group when
        None; when ``victim`` is a follower, until the leader is still there), then restart it on its store
        and wait until it is current again."""
        index = self.cluster.index_of(victim)
        self.cluster.kill(index)
        started = time.monotonic()
        leader = await self._leader(stream, other_than=victim)
        elected = time.monotonic() - started
        self.cluster.restart(index)
        current = await asyncio.to_thread(self.cluster.wait_until_current, index, 60)
        await self._finish(
            fault,
            victim,
            started,
            time.monotonic(),
            leader_after=leader,
            leader_after_seconds=round(elected, 2),
            node_current_after_restart_seconds=round(current, 2),
        )

    async def freeze(self, victim: str) -> None:
        """SIGSTOP ``victim`` (the requests stream's leader) beyond the Raft timeouts, then SIGCONT it."""
        index = self.cluster.index_of(victim)
        connected = sorted(c.get("name", "") for c in self.cluster.monitor(index, "/connz")["connections"])
        self.cluster.pause(index)
        started = time.monotonic()
        leader = await self._leader(events.REQUESTS_STREAM, other_than=victim)
        elected = time.monotonic() - started
        await asyncio.sleep(max(0.0, FROZEN_SECONDS - (time.monotonic() - started)))  # the fault's length
        thawed = time.monotonic()
        self.cluster.resume(index)
        # Services connected to the frozen node left it (their pings unanswered) for the others, which elected
        # a new leader: intake came back before the node did.
        while_frozen = self.load.seen(started + elected, thawed)["accepted"]
        assert while_frozen > 0
        current = await asyncio.to_thread(self.cluster.wait_until_current, index, 60)
        await self._finish(
            f"SIGSTOP {FROZEN_SECONDS:g} s, then SIGCONT",
            victim,
            started,
            time.monotonic(),
            clients_on_the_node=connected,
            leader_after=leader,
            leader_after_seconds=round(elected, 2),
            node_current_after_thaw_seconds=round(current, 2),
            accepted_while_frozen_after_the_election=while_frozen,
        )


async def test_squall_on_a_nats_cluster_loses_nothing_when_nodes_fail(
    cluster: NatsCluster, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = plain_dsn(own_postgres.url)
    conn = await asyncpg.connect(dsn)
    await conn.execute(EFFECTS_SQL)
    await conn.close()
    settings = make_settings(cluster.urls, own_postgres.url)
    port = free_port()
    services = _services(settings, tmp_path, port)
    try:
        await _run(cluster, own_postgres, services, tmp_path, port, dsn)
    finally:
        for group in services:
            group.stop_all()


def _services(settings: Settings, log_dir: Path, port: int) -> tuple[ServiceProcesses, ProcessorProcesses]:
    common = {
        "SQUALL_NATS__STREAM_REPLICAS": "3",
        "SQUALL_PROCESSING_MODULES": MODULE,
        "SQUALL_PROCESSINGS__SUM__MODE": "immediate",
        # A frozen node is left after 2 to 3 s (the default, 5 s, takes 10 to 15 s: longer than the freeze).
        "SQUALL_NATS__PING_INTERVAL_SECONDS": "1",
    }
    services = ServiceProcesses(
        settings,
        log_dir,
        SQUALL_GATEWAY__PORT=str(port),
        SQUALL_GATEWAY__HOST="127.0.0.1",
        SQUALL_GATEWAY__PUBLISH_TIMEOUT_SECONDS="2",
        SQUALL_AUTH__REQUIRED="false",
        SQUALL_SCHEDULER__DEFAULT_INTERVAL_SECONDS="0.2",
        SQUALL_SCHEDULER__LEASE_SECONDS="3",
        **common,
    )
    processors = ProcessorProcesses(settings, log_dir / "computations.log", log_dir)
    processors.env.update(common)
    return services, processors


async def _run(
    cluster: NatsCluster,
    postgres: PostgresServer,
    services: tuple[ServiceProcesses, ProcessorProcesses],
    log_dir: Path,
    port: int,
    dsn: str,
) -> None:
    roles, processors = services
    base_url = f"http://127.0.0.1:{port}"
    roles.start("gateway", "gateway")
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:

        async def ready() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(ready, timeout=60, what="the gateway ready")
        roles.start("scheduler", "scheduler")
        processors.start("processor-0")
        processors.start("processor-1")
        await _check_three_replicas(cluster)
        await _depend_on_a_tcp_check(http, postgres)
        started = dict(roles.by_name) | dict(processors.by_name)

        load = Load(base_url)
        faults = Faults(cluster, load, dsn)
        clients = [asyncio.create_task(load.client(i)) for i in range(CLIENTS)]
        began = time.monotonic()
        try:
            await _inject(faults, dsn)
        finally:
            load.running = False
            outcomes = await asyncio.gather(*clients, return_exceptions=True)
        load_seconds = time.monotonic() - began
        assert [o for o in outcomes if o is not None] == []
        assert load.unexpected == []
        print("\nNATS cluster faults:", json.dumps(faults.report, indent=2))
        faults_ended = await _database_now(dsn)

        drained = time.monotonic()
        await _wait_every_accepted_request_processed(dsn, load)
        drained_seconds = time.monotonic() - drained
        items = await _check_processed_once_and_right(dsn, load)
        report = {
            "requests_accepted": len(load.accepted),
            "items": len(items),
            "lost": 0,
            "duplicated_effects": 0,
            "answers_503": sum(1 for _, kind in load.attempts if kind == "503"),
            "connection_errors": sum(1 for _, kind in load.attempts if kind == "connection"),
            "load_seconds": round(load_seconds, 1),
            "drain_seconds_after_load": round(drained_seconds, 1),
            "error_lines_in_service_logs": _error_lines(log_dir),
        }
        print("NATS cluster run:", json.dumps(report, indent=2))
        await _check_nothing_stuck_and_stats(http, dsn, load, items)
        await _check_ticks_and_checks_went_on(http, dsn, faults_ended)
        assert await ready()
        assert {name: p.poll() for name, p in started.items()} == {name: None for name in started}
        assert dict(roles.by_name) | dict(processors.by_name) == started  # nothing restarted by hand


async def _inject(faults: Faults, dsn: str) -> None:
    load = faults.load

    async def warmed_up() -> bool:
        return len(load.accepted) >= 300

    await wait_for(warmed_up, timeout=60, what="300 requests accepted before the faults")
    meta = await faults._leader(None)
    await faults.kill_and_restart("SIGKILL the meta leader, restart it", meta, None)
    stream = await faults._leader(events.REQUESTS_STREAM)
    await faults.kill_and_restart(
        f"SIGKILL the {events.REQUESTS_STREAM} leader, restart it", stream, events.REQUESTS_STREAM
    )
    stream = await faults._leader(events.REQUESTS_STREAM)
    meta = await faults._leader(None)
    followers = [f"n{i}" for i in range(3) if f"n{i}" != stream]
    follower = next((n for n in followers if n != meta), followers[0])
    await faults.kill_and_restart(
        f"SIGKILL a follower of {events.REQUESTS_STREAM}, restart it", follower, events.REQUESTS_STREAM
    )
    await faults.freeze(await faults._leader(events.REQUESTS_STREAM))

    async def enough() -> bool:
        return len(load.accepted) >= REQUESTS

    await wait_for(enough, timeout=180, interval=0.5, what=f"{REQUESTS} requests accepted")


async def _check_three_replicas(cluster: NatsCluster) -> None:
    """Both streams and their consumers exist with three replicas: a leader and two peers."""
    nc = await nats.connect(servers=cluster.urls.split(","))

    def info(subject: str) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        async def ask() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = json.loads((await nc.request(subject, b"", timeout=5)).data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return None  # a leader being elected
            # Before its Raft group has elected a leader, a stream's information has none (or no cluster).
            return None if "error" in answer or not (answer.get("cluster") or {}).get("leader") else answer

        return ask

    try:
        for stream, consumer in (
            (events.REQUESTS_STREAM, events.REQUESTS_CONSUMER),
            (events.TASKS_STREAM, events.TASKS_CONSUMER),
        ):
            stream_info = await wait_for(info(f"$JS.API.STREAM.INFO.{stream}"), what=stream)
            assert stream_info["config"]["num_replicas"] == 3
            assert stream_info["cluster"]["leader"] in {"n0", "n1", "n2"}
            assert len(stream_info["cluster"]["replicas"]) == 2
            consumer_info = await wait_for(info(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"), what=consumer)
            assert len(consumer_info["cluster"]["replicas"]) == 2
    finally:
        await nc.close()


async def _depend_on_a_tcp_check(http: httpx.AsyncClient, postgres: PostgresServer) -> None:
    """The batch processing needs a tcp dependency (PostgreSQL's port: up all along), checked every second."""
    answer = await http.put(
        f"/v1/dependencies/{DEPENDENCY}",
        json={"kind": "tcp", "target": f"127.0.0.1:{postgres.port}", "interval_seconds": 1},
    )
    assert answer.status_code in (200, 201), answer.text
    answer = await http.patch("/v1/processings/campaign", json={"dependencies": [DEPENDENCY]})
    assert answer.status_code == 200, answer.text


async def _database_now(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


async def _wait_every_accepted_request_processed(dsn: str, load: Load) -> None:
    async def all_processed() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            done = await conn.fetchval("SELECT count(*) FROM requests WHERE processed")
        finally:
            await conn.close()
        return bool(done == len(load.accepted))

    await wait_for(all_processed, timeout=120, interval=0.5, what="every accepted request processed")


async def _check_processed_once_and_right(dsn: str, load: Load) -> list[asyncpg.Record]:
    """Every accepted request, and only those, processed, every item done with its job's result, and each
    result written once (the effects table)."""
    conn = await asyncpg.connect(dsn)
    try:
        rids = {r["rid"] for r in await conn.fetch("SELECT rid FROM requests WHERE processed")}
        assert rids == set(load.accepted), (len(rids), len(load.accepted))
        items = await conn.fetch(
            "SELECT r.rid, i.position, i.number, i.job, i.state, i.result, i.lease_until "
            "FROM all_items i JOIN requests r ON r.task_id = i.request_task_id"
        )
        effects = await conn.fetch(
            "SELECT request_task_id, position, count(*) AS n FROM effects GROUP BY 1, 2"
        )
    finally:
        await conn.close()
    assert len(items) == ITEMS_PER_REQUEST * len(load.accepted)
    for item in items:
        job, numbers = load.accepted[item["rid"]]
        assert item["job"] == job and item["number"] == numbers[item["position"]], dict(item)
        assert item["state"] == "done" and item["lease_until"] is None, dict(item)
        assert item["result"] == str(expected_result(job, item["number"])), dict(item)
    assert [dict(e) for e in effects if e["n"] > 1] == []
    assert len(effects) == len(items)
    return items


async def _check_nothing_stuck_and_stats(
    http: httpx.AsyncClient, dsn: str, load: Load, items: list[asyncpg.Record]
) -> None:
    async def settled() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            busy = await conn.fetchval("SELECT count(*) FROM tasks WHERE state IN ('running', 'queued')")
        finally:
            await conn.close()
        return bool(busy == 0)

    await wait_for(settled, timeout=60, interval=0.5, what="no task left running or queued")
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE state = 'dead'") == 0
    finally:
        await conn.close()

    async def counted() -> dict[str, Any] | None:  # /v1/stats is cached for a second
        stats: dict[str, Any] = (await http.get("/v1/stats")).json()
        requests = stats["requests"]
        return stats if requests["accepted"] == requests["processed"] == len(load.accepted) else None

    stats = await wait_for(counted, what="/v1/stats agreeing")
    for job in ("sum", "campaign"):
        per_job = sum(1 for i in items if i["job"] == job)
        assert stats["items"][job] == {"pending": 0, "done": per_job, "failed": 0}, stats


async def _check_ticks_and_checks_went_on(http: httpx.AsyncClient, dsn: str, faults_ended: Any) -> None:
    """After the faults the scheduler still fires ticks (skipped once nothing is pending: the backlog was
    drained, which took emitted ones) and checks the dependency, which is up."""

    async def ticking() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            fired = await conn.fetchval(
                "SELECT count(*) FROM schedule_ticks WHERE emitted_at > $1", faults_ended
            )
        finally:
            await conn.close()
        return bool(fired > 0)

    await wait_for(ticking, timeout=30, what="a tick fired after the faults")

    async def checked() -> dict[str, Any] | None:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT state FROM dependencies WHERE name = $1 AND last_checked_at > $2",
                DEPENDENCY,
                faults_ended,
            )
        finally:
            await conn.close()
        return None if row is None else dict(row)

    state = await wait_for(checked, timeout=30, what="the dependency checked after the faults")
    assert state == {"state": "up"}
    assert (await http.get(f"/v1/dependencies/{DEPENDENCY}")).json()["state"] == "up"


def _error_lines(log_dir: Path) -> dict[str, int]:
    """Lines logged at ERROR (or a traceback) per service log: reported, not asserted."""
    counts: dict[str, int] = {}
    for log in sorted(log_dir.glob("*.log")):
        if log.name == "computations.log":
            continue
        text = log.read_text(errors="replace")
        counts[log.stem] = sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)
    return counts


async def test_a_service_started_while_jetstream_has_no_quorum_waits_for_it(
    cluster: NatsCluster, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two nodes of three down: the third takes connections but its JetStream API cannot answer (no meta
    leader). A processor starting then retries creating the streams instead of exiting with a traceback, and
    runs once the nodes are back (before, its first API timeout ended the process)."""
    cluster.kill(1)
    cluster.kill(2)
    settings = make_settings(cluster.urls, own_postgres.url)
    processors = ProcessorProcesses(settings, tmp_path / "computations.log", tmp_path)
    processors.env.update({"SQUALL_NATS__STREAM_REPLICAS": "3", "SQUALL_NATS__CONNECT_RETRY_SECONDS": "120"})
    process = processors.start("processor-0")
    log = tmp_path / "processor-0.log"
    try:

        async def retrying() -> bool:
            return "JetStream not ready to create the streams, retrying" in log.read_text()

        await wait_for(retrying, timeout=60, what="the processor retrying")
        assert process.poll() is None
        cluster.restart(1)
        cluster.restart(2)
        await asyncio.to_thread(cluster.wait_for_meta_leader, 60)
        await _check_three_replicas(cluster)  # created by the processor, which waited
        assert process.poll() is None
        assert "Traceback" not in log.read_text()
    finally:
        processors.stop_all()
    assert process.returncode == 0
