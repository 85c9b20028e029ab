"""The upgrade rehearsal (issue 25): a rolling upgrade from the previous release to the working tree under
load, then a rollback, against real NATS JetStream and PostgreSQL, every service an OS process.

The previous release makes its schema and runs a gateway, two processors and a scheduler. Under steady load
(an immediate and a batch processing, a short poll schedule, a dependency checked twice a second) the
working tree's migrations are applied one revision at a time while the old services run; then the services
are replaced one by one, as a Deployment's rolling update does: a processor, the scheduler (leadership
handed over), the gateway (clients moved to the new one), and last the other processor, kept until it has
consumed events the new gateway and scheduler published. Then the same in reverse, back to the previous
release on the expanded schema (a rollback never downgrades the schema).

After each phase: every accepted request processed once with its job's result (an effects table filled by a
trigger on items), no answer but 200, 202 and 503 with Retry-After, every tick of every schedule once, nothing
stuck, /v1/stats agreeing, no error logged by any service. The figures go to stdout."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from squall.cli.embedded import NatsServer, PostgresServer
from squall.core import migrate
from tests.integration.harness import plain_dsn
from tests.integration.test_fault_campaign import EFFECTS_SQL
from tests.upgrade.checks import Database, check_everything
from tests.upgrade.fleet import Code, Fleet, Service, tasks_finished
from tests.upgrade.load import RollingLoad
from tests.upgrade.release import BuiltRelease

ITEMS = 4  # fewer than 8 items of a processing per request keep item rows, which the effects trigger sees
CLIENTS = 8
REQUESTS_PER_PHASE = 6_000  # at least; the load runs until every step of the phase is done
BATCH_INTERVAL = "0.5"  # the poll schedule of mul, the batch processing
# How much the survivor of the other release must consume of what the new gateway and scheduler publish.
FOREIGN_REQUESTS = 200
FOREIGN_POLLS = 3
# Poll tasks are shared unevenly between two processors: one got none for 57 s in a run here.
FOREIGN_WAIT_SECONDS = 150


def service_settings(nats: NatsServer, postgres: PostgresServer) -> dict[str, str]:
    """The settings of every service of both releases (those 0.1.0 knows, with the same meaning)."""
    return {
        "SQUALL_NATS_URL": nats.url,
        "SQUALL_DATABASE_URL": postgres.url,
        "SQUALL_DATABASE_POOL_SIZE": "5",
        "SQUALL_LOG_FORMAT": "json",  # Fleet.errors reads the levels
        "SQUALL_AUTH__REQUIRED": "false",
        "SQUALL_GATEWAY__HOST": "127.0.0.1",
        "SQUALL_GATEWAY__SHUTDOWN_DELAY_SECONDS": "1",
        "SQUALL_PROCESSOR__HTTP_HOST": "127.0.0.1",
        "SQUALL_PROCESSOR__ACK_WAIT_SECONDS": "3",
        "SQUALL_PROCESSOR__LEASE_SECONDS": "3",
        "SQUALL_PROCESSOR__SHUTDOWN_GRACE_SECONDS": "5",
        "SQUALL_SCHEDULER__HTTP_HOST": "127.0.0.1",
        "SQUALL_SCHEDULER__LEASE_SECONDS": "3",
        "SQUALL_PROCESSINGS__SUM__MODE": "immediate",
        "SQUALL_PROCESSINGS__MUL__INTERVAL_SECONDS": BATCH_INTERVAL,
        "SQUALL_PROCESSINGS__MUL__DEPENDENCIES": '["upstream"]',
        # A dependency that stays up (the NATS server's port): its checks run all along, by either release.
        "SQUALL_DEPENDENCIES__UPSTREAM__KIND": "tcp",
        "SQUALL_DEPENDENCIES__UPSTREAM__TARGET": f"127.0.0.1:{nats.port}",
        "SQUALL_DEPENDENCIES__UPSTREAM__INTERVAL_SECONDS": "0.5",
    }


class Rehearsal:
    def __init__(self, fleet: Fleet, db: Database, load: RollingLoad, cwd: Path) -> None:
        self.fleet = fleet
        self.db = db
        self.load = load
        self.cwd = cwd
        self.started: Counter[tuple[Code, str]] = Counter()

    def start(self, role: str, code: Code) -> Service:
        self.started[code, role] += 1
        return self.fleet.start(role, f"{code}-{role}-{self.started[code, role]}", code)

    async def squall(self, code: Code, *args: str) -> None:
        """A ``squall`` command of one release (migrate), run to its end while the load goes on."""
        python = str(self.fleet.old.python) if code == "old" else sys.executable
        done = await asyncio.to_thread(
            subprocess.run,
            [python, "-m", "squall.cli", *args],
            env=self.fleet.old.env(**self.fleet.settings),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{code} squall {' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    async def revision(self) -> str:
        return str(await self.db.fetchval("SELECT version_num FROM alembic_version"))

    async def processed(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM requests WHERE processed"))

    async def flows(self, what: str, requests: int = 30) -> None:
        """Requests are accepted and processed (``requests`` more of each) after ``what``."""
        accepted, processed = len(self.load.accepted), await self.processed()

        async def flowing() -> bool:
            return (
                len(self.load.accepted) >= accepted + requests
                and await self.processed() >= processed + requests
            )

        await self.fleet.wait(
            flowing, timeout=60, what=f"{requests} requests accepted and processed after {what}"
        )

    async def migrate_one_revision_at_a_time(self) -> list[str]:
        """The working tree's migrations from the schema's revision to its head, one by one, the old services
        running under load; after each, they must still take and process requests."""
        script = ScriptDirectory(str(migrate.MIGRATIONS))  # the working tree's migrations
        current, revision = await self.revision(), script.get_current_head()
        steps: list[str] = []
        while revision != current:
            assert revision is not None, f"the schema's revision {current} is not an ancestor of the head"
            steps.insert(0, revision)
            down = script.get_revision(revision).down_revision
            assert down is None or isinstance(down, str), f"{revision} merges branches: {down}"
            revision = down
        for step in steps:
            await self.squall("new", "migrate", "--revision", step)
            assert await self.revision() == step
            await self.flows(f"migration {step}, with the previous release's services")
        return steps

    async def leader(self) -> str | None:
        return await self.db.fetchval(  # type: ignore[no-any-return]
            "SELECT holder FROM scheduler_leader WHERE expires_at > now()"
        )

    async def replace_processor(self, leaving: Service, code: Code) -> None:
        await self.fleet.ready(self.start("processor", code).name)
        await self.fleet.stop(leaving.name)

    async def replace_scheduler(self, leaving: Service, code: Code) -> float:
        """Start a replica of ``code``, SIGTERM the leader; the seconds until the new replica leads, which it
        shows by firing ticks."""

        async def leads() -> bool:
            return await self.leader() == leaving.name

        await self.fleet.wait(leads, timeout=20, what=f"{leaving.name} leading")
        joining = self.start("scheduler", code)
        await self.fleet.ready(joining.name)
        epoch = await self.db.fetchval("SELECT epoch FROM scheduler_leader")
        signalled = time.monotonic()
        stopping = asyncio.create_task(self.fleet.stop(leaving.name))

        async def handed_over() -> bool:
            return await self.leader() == joining.name

        await self.fleet.wait(
            handed_over, timeout=20, what=f"leadership handed from {leaving.name} to {joining.name}"
        )
        seconds = time.monotonic() - signalled
        await stopping

        async def ticking() -> bool:
            newest = await self.db.fetchval("SELECT max(leader_epoch) FROM schedule_ticks")
            return bool(newest > epoch)

        await self.fleet.wait(ticking, timeout=20, what=f"a tick fired by {joining.name}")
        return seconds

    async def replace_gateway(self, leaving: Service, code: Code) -> None:
        """Start a gateway of ``code`` on its own port, move the clients to it, SIGTERM the old one."""
        joining = await self.fleet.ready(self.start("gateway", code).name)
        self.load.base_url = joining.url
        await self.flows(f"the clients moved to {joining.name}")
        await self.fleet.stop(leaving.name)

    async def survivor_consumes(self, survivor: Service) -> dict[str, float]:
        """The last processor of the release being replaced records requests the other release's gateway
        published and runs poll tasks its scheduler emitted (the only gateway and scheduler left)."""
        requests = await tasks_finished(survivor, "request")
        polls = await tasks_finished(survivor, "poll", "mul")

        async def consumed() -> dict[str, float] | None:
            more = {
                "requests": await tasks_finished(survivor, "request") - requests,
                "poll_tasks": await tasks_finished(survivor, "poll", "mul") - polls,
            }
            return (
                more if more["requests"] >= FOREIGN_REQUESTS and more["poll_tasks"] >= FOREIGN_POLLS else None
            )

        what = (
            f"{survivor.name} recording {FOREIGN_REQUESTS} requests and running {FOREIGN_POLLS} poll tasks "
            "that the other release's gateway and scheduler published"
        )
        started = time.monotonic()
        more = await self.fleet.wait(consumed, timeout=FOREIGN_WAIT_SECONDS, what=what)
        return {**more, "seconds": round(time.monotonic() - started, 1)}

    async def roll(self, phase: str, leaving: Code, joining: Code) -> dict[str, Any]:
        """Replace every service of ``leaving`` with one of ``joining`` under load; the phase's figures."""
        figures: dict[str, Any] = {}
        processors = self.fleet.running(leaving, "processor")
        assert len(processors) == 2, processors
        await self.replace_processor(processors[0], joining)
        await self.flows(f"the first processor replaced ({phase})")
        figures["leader_handover_seconds"] = round(
            await self.replace_scheduler(self.fleet.running(leaving, "scheduler")[0], joining), 2
        )
        await self.flows(f"the scheduler replaced ({phase})")
        await self.replace_gateway(self.fleet.running(leaving, "gateway")[0], joining)
        figures["consumed_by_last_" + leaving + "_processor"] = await self.survivor_consumes(processors[1])
        await self.replace_processor(processors[1], joining)
        await self.flows(f"the last processor replaced ({phase})")
        assert {s.code for s in self.fleet.services.values() if s.process.poll() is None} == {joining}
        return figures


async def run_phase(
    rehearsal: Rehearsal, phase: str, leaving: Code, joining: Code, migrate_first: bool
) -> dict[str, Any]:
    """One phase under load, then its checks; its figures."""
    load = rehearsal.load
    before_503, before_errors, before = load.statuses[503], load.connection_errors, len(load.accepted)
    load_started: dt.datetime = await rehearsal.db.fetchval("SELECT now()")
    started = time.monotonic()
    load.start(phase, CLIENTS)
    figures: dict[str, Any] = {"phase": phase}
    try:
        await rehearsal.flows(f"the start of the {phase}")
        if migrate_first:
            figures["migrations_applied"] = await rehearsal.migrate_one_revision_at_a_time()
        figures.update(await rehearsal.roll(phase, leaving, joining))

        async def enough() -> bool:
            return len(load.accepted) - before >= REQUESTS_PER_PHASE

        await rehearsal.fleet.wait(
            enough, timeout=120, what=f"{REQUESTS_PER_PHASE} requests accepted ({phase})"
        )
    finally:
        unanswered = await load.stop()
    assert unanswered == 0, f"{unanswered} clients still retrying their last request when the load stopped"
    figures["load_seconds"] = round(time.monotonic() - started, 1)
    phase_rids = [rid for rid in load.accepted if rid.startswith(f"{phase}-")]
    figures["requests_accepted"] = {
        "sum (immediate)": sum(1 for rid in phase_rids if load.accepted[rid][0] == "sum"),
        "mul (batch)": sum(1 for rid in phase_rids if load.accepted[rid][0] == "mul"),
    }
    figures["answers_503"] = load.statuses[503] - before_503
    figures["connection_errors"] = load.connection_errors - before_errors
    checked = time.monotonic()
    figures.update(await check_everything(rehearsal.db, rehearsal.fleet, load, load_started, ITEMS))
    figures["drain_and_check_seconds"] = round(time.monotonic() - checked, 1)
    figures["schema_revision"] = await rehearsal.revision()
    return figures


@pytest.mark.slow
@pytest.mark.upgrade
async def test_rolling_upgrade_then_rollback_under_load(
    previous_release: BuiltRelease, servers: tuple[NatsServer, PostgresServer], tmp_path: Path
) -> None:
    nats, postgres = servers
    cwd = tmp_path / "cwd"  # the services' working folder: outside the working tree
    cwd.mkdir()
    (tmp_path / "logs").mkdir()
    fleet = Fleet(previous_release, service_settings(nats, postgres), tmp_path / "logs", cwd)
    db = Database(plain_dsn(postgres.url))
    rehearsal = Rehearsal(fleet, db, RollingLoad("", ITEMS), cwd)
    try:
        await rehearsal.squall("old", "migrate")
        old_head = await rehearsal.revision()
        await db.execute(EFFECTS_SQL)  # test instrumentation on the old schema, kept through the migrations
        for role in ("gateway", "processor", "processor", "scheduler"):
            rehearsal.start(role, "old")
        for service in list(fleet.services.values()):
            await fleet.ready(service.name)
        rehearsal.load.base_url = fleet.running("old", "gateway")[0].url
        upgrade = await run_phase(rehearsal, "upgrade", "old", "new", migrate_first=True)
        rollback = await run_phase(rehearsal, "rollback", "new", "old", migrate_first=False)
        assert rollback["schema_revision"] == upgrade["schema_revision"]  # the schema stayed expanded
        report = {
            "previous_release": previous_release.version,
            "old_schema_head": old_head,
            "upgrade": upgrade,
            "rollback": rollback,
        }
        print("\nupgrade rehearsal:", json.dumps(report, indent=2))
    finally:
        await rehearsal.load.stop()
        fleet.stop_all()
