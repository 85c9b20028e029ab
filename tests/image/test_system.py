"""The system runs from the image: the chart's containers (the ``squall migrate`` init container, a gateway,
two processors, a scheduler, then the ``helm test`` pod) started from the image built here, each as the
image's user on a read-only root with only /tmp writable (tests/image/pods.py), against PostgreSQL and NATS
on the host's loopback. A client on the host submits through that gateway and checks every result; the
chart's probes answer; SIGTERM stops each role cleanly within its grace period.

The tests of this module share one running system and run in the order written: the last stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from deploy import image as recipe
from squall.cli.embedded import NatsServer, free_port
from squall.core import migrate
from squall.core.settings import load_settings
from squall.gateway.auth import new_token, token_digest
from tests.deploy.manifests import render_chart
from tests.image.pods import Container, Kubelet, Spec, chart_specs
from tests.integration.harness import plain_dsn, wait_for

pytestmark = pytest.mark.image

EXPECTED = {"sum": lambda n: n + 2, "mul": lambda n: n * 2, "square": lambda n: n * n}
NUMBERS = [4, 9, -3, 0, 2**40, 2**63 - 1, -(2**63)]
# With the host's network each process listens on a free loopback port instead of its container port
# (two processors could not share 9101): the settings that move it, by role.
LISTEN = {
    "gateway": ("SQUALL_GATEWAY__HOST", "SQUALL_GATEWAY__PORT"),
    "processor": ("SQUALL_PROCESSOR__HTTP_HOST", "SQUALL_PROCESSOR__HTTP_PORT"),
    "scheduler": ("SQUALL_SCHEDULER__HTTP_HOST", "SQUALL_SCHEDULER__HTTP_PORT"),
}
# The pods run, by name (SQUALL_INSTANCE_ID), and the chart container each runs.
PODS = {
    "squall-gateway-0": "gateway",
    "squall-processor-0": "processor",
    "squall-processor-1": "processor",
    "squall-scheduler-0": "scheduler",
}


@dataclass
class Role:
    spec: Spec
    container: Container
    port: int


@dataclass
class RunningSystem:
    kubelet: Kubelet
    specs: dict[str, Spec]
    roles: dict[str, Role]  # by pod name
    addresses: dict[str, str]  # NATS and PostgreSQL, as every container gets them
    database_url: str
    token: str
    migrate: tuple[int, str]  # the init container's exit code and output

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.roles['squall-gateway-0'].port}"

    def logs(self) -> str:
        return "\n".join(role.container.tail() for role in self.roles.values())


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def empty_database(postgres_template: str) -> AsyncIterator[str]:
    """A database with no schema yet, on the session's PostgreSQL: the image's ``squall migrate`` makes it."""
    name = f"squall_image_{os.getpid()}"
    admin = await asyncpg.connect(plain_dsn(str(make_url(postgres_template).set(database="postgres"))))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield str(make_url(postgres_template).set(drivername="postgresql", database=name))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _secrets(token: str) -> dict[tuple[str, str], str]:
    """The Secrets the chart references (docs/deploy.md): the tokens file holds the client's token's digest.
    The test PostgreSQL trusts loopback connections, so the password file is read but not checked."""
    entry = {"name": "image-test", "scopes": ["submit", "read"], "sha256": token_digest(token)}
    return {
        ("squall-database", "password"): "unused-by-a-trusting-server",
        ("squall-api-tokens", "tokens.json"): json.dumps([entry]),
        ("squall-test-token", "token"): token,
    }


async def _ready(system: RunningSystem, pod: str) -> None:
    role = system.roles[pod]

    async def answers() -> bool:
        assert role.container.process.poll() is None, f"{pod} exited\n{role.container.tail()}"
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"http://127.0.0.1:{role.port}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(answers, timeout=90, interval=0.2, what=f"{pod} ready\n{role.container.tail()}")


@pytest.fixture(scope="module")
async def system(
    image: recipe.Built, nats: NatsServer, empty_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningSystem]:
    token = new_token()
    objects = render_chart({"tests": {"tokenSecret": "squall-test-token"}})
    scratch = tmp_path_factory.mktemp("pods")
    scratch.chmod(0o755)
    kubelet = Kubelet(image.reference, objects, _secrets(token), scratch)
    specs = chart_specs(objects)
    addresses = {"SQUALL_NATS_URL": nats.url, "SQUALL_DATABASE_URL": empty_database}
    try:
        migrated = await asyncio.to_thread(kubelet.run, specs["migrate"], "squall-migrate", addresses, 180)
        assert migrated[0] == 0, migrated[1]
        roles = {}
        for pod, role in PODS.items():
            host, port_setting = LISTEN[role]
            port = free_port()
            env = {**addresses, host: "127.0.0.1", port_setting: str(port)}
            roles[pod] = Role(specs[role], kubelet.start(specs[role], pod, env), port)
        running = RunningSystem(kubelet, specs, roles, addresses, empty_database, token, migrated)
        await asyncio.gather(*(_ready(running, pod) for pod in roles))
        yield running
    finally:
        await asyncio.to_thread(kubelet.cleanup)


async def test_migrate_from_the_image_brings_the_schema_to_head(system: RunningSystem) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config(load_settings())).get_current_head()
    conn = await asyncpg.connect(system.database_url)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head
    finally:
        await conn.close()


def _mounts(pid: int) -> dict[str, set[str]]:
    """Mount point -> its file system type and mount options, in a process's mount namespace."""
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        file_system = fields[fields.index("-") + 1]
        mounts[fields[4]] = {file_system, *fields[5].split(",")}  # the later of a mount point wins
    return mounts


def test_each_role_runs_as_the_image_user_with_only_tmp_writable(system: RunningSystem) -> None:
    for pod, role in system.roles.items():
        pid = role.container.pid()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert status["Uid"].split() == ["10001"] * 4 and status["Gid"].split() == ["10001"] * 4, pod
        assert status["CapEff"].strip() == "0" * 16 and status["NoNewPrivs"].strip() == "1", pod
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"/opt/squall/bin/squall",
            role.spec.container["args"][0].encode(),
        ], pod
        mounts = _mounts(pid)
        assert "ro" in mounts["/"] and {"rw", "tmpfs"} <= mounts["/tmp"], (pod, mounts["/"], mounts["/tmp"])
        # Writable: /tmp, besides the kernel's and the runtime's own file systems.
        writable = {
            m
            for m, options in mounts.items()
            if "rw" in options and not m.startswith(("/proc", "/dev", "/sys"))
        }
        assert writable == {"/tmp"}, (pod, writable)


async def test_requests_through_the_gateway_come_back_right(system: RunningSystem) -> None:
    """Every built-in processing, batch mode: the processors record, the scheduler's poll tasks run them."""
    headers = {"Authorization": f"Bearer {system.token}"}
    sent = {
        f"image-{index}": [{"number": n + index, "job": job} for n in NUMBERS[:-2]]
        + [{"number": n, "job": job} for n in NUMBERS[-2:]]  # the int64 limits, results beyond them
        for index, job in enumerate(list(EXPECTED) * 4)
    }
    async with httpx.AsyncClient(base_url=system.gateway_url, headers=headers, timeout=30) as client:
        refused = await client.post(
            "/v1/requests", json={"items": sent["image-0"]}, headers={"Authorization": ""}
        )
        assert refused.status_code == 401  # the tokens file mounted from its Secret is in force
        for rid, items in sent.items():
            answer = await client.post("/v1/requests", json={"rid": rid, "items": items})
            assert answer.status_code == 202, answer.text

        async def states() -> dict[str, Any] | None:
            found = {rid: (await client.get(f"/v1/requests/{rid}")).json() for rid in sent}
            return found if all(state["processed"] for state in found.values()) else None

        processed = await wait_for(states, timeout=60, interval=0.5, what="every request processed")
    for rid, items in sent.items():
        got = processed[rid]["items"]
        assert [(i["number"], i["job"]) for i in got] == [(i["number"], i["job"]) for i in items], rid
        results = [(i["state"], i["result"]) for i in got]
        assert results == [("done", EXPECTED[i["job"]](i["number"])) for i in items], rid


async def test_the_chart_probes_answer(system: RunningSystem) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for pod, role in system.roles.items():
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = role.spec.container[kind]["httpGet"]
                # The probe's named port is the role's container port, which the process listens on in a
                # pod; here that port moved to role.port (see LISTEN).
                assert role.spec.port(probe["port"]) == role.spec.container["ports"][0]["containerPort"]
                answer = await client.get(f"http://127.0.0.1:{role.port}{probe['path']}")
                assert 200 <= answer.status_code < 400, (pod, kind, answer.status_code, answer.text)


async def test_the_helm_test_pod_passes(system: RunningSystem) -> None:
    spec = system.specs["submit"]
    env = {"GATEWAY_URL": system.gateway_url}
    code, output = await asyncio.to_thread(system.kubelet.run, spec, "squall-test-submit", env, 180)
    assert code == 0, output
    assert "submitted" in output and "processed" in output


async def test_sigterm_stops_every_role_cleanly_within_its_grace_period(system: RunningSystem) -> None:
    """Last: it stops the system."""
    stopped = await asyncio.gather(
        *(asyncio.to_thread(role.container.stop, role.spec.grace_seconds) for role in system.roles.values())
    )
    for (pod, role), (code, seconds) in zip(system.roles.items(), stopped, strict=True):
        assert code == 0 and seconds < role.spec.grace_seconds, (pod, code, seconds, role.container.tail())
