"""Real NATS JetStream and PostgreSQL for integration tests.

PostgreSQL: one embedded server per session (the ``pgserver`` wheel), a migrated template database, and a
fresh database per test cloned from it. NATS: a fresh JetStream server per test on a free port (it starts in
milliseconds), so a test may stop, kill or restart it. ``--database-url`` / ``--nats-url`` use existing
servers instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import nats
import nats.js.errors
import pytest
from sqlalchemy.engine import make_url

from squall.cli.embedded import NatsServer, PostgresServer
from squall.core import migrate
from squall.core.settings import Settings, load_settings
from tests.integration.harness import LogRecords, System, make_settings, plain_dsn, start_system

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of a migrated template database; tests clone it."""
    given = request.config.getoption("--database-url")
    server = None
    if given:
        admin_url = load_settings(database_url=given).database_url
    else:
        server = PostgresServer(tmp_path_factory.mktemp("postgres"), database="postgres")
        server.start()
        admin_url = server.url
    template = f"squall_template_{os.getpid()}"
    asyncio.run(_recreate_database(admin_url, template))
    template_url = str(make_url(admin_url).set(database=template).render_as_string(hide_password=False))
    migrate.upgrade(load_settings(database_url=template_url))
    yield template_url
    if server is not None:
        server.stop()


async def _recreate_database(admin_url: str, name: str, template: str | None = None) -> None:
    conn = await asyncpg.connect(plain_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        suffix = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(postgres_template: str) -> str:
    name = f"squall_test_{os.getpid()}_{next(_databases)}"
    admin_url = str(
        make_url(postgres_template).set(database="postgres").render_as_string(hide_password=False)
    )
    template = make_url(postgres_template).database
    assert template is not None
    await _recreate_database(admin_url, name, template)
    return str(make_url(postgres_template).set(database=name).render_as_string(hide_password=False))


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatsServer | None]:
    """A fresh JetStream server for this test (None when --nats-url names an existing one)."""
    if request.config.getoption("--nats-url"):
        yield None
        return
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nats_url(request: pytest.FixtureRequest, nats_server: NatsServer | None) -> str:
    if nats_server is not None:
        return nats_server.url
    url = str(request.config.getoption("--nats-url"))
    nc = await nats.connect(url)
    js = nc.jetstream()
    for stream in ("SQUALL_REQUESTS", "SQUALL_TASKS"):
        try:
            await js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass
    await nc.close()
    return url


@pytest.fixture
def settings(nats_url: str, database_url: str) -> Settings:
    return make_settings(nats_url, database_url)


@pytest.fixture
async def system_factory() -> AsyncIterator[Callable[..., Awaitable[System]]]:
    """Start a system with given settings; everything it started is stopped after the test."""
    async with AsyncExitStack() as stack:

        async def factory(settings: Settings, processors: int = 1) -> System:
            return await start_system(settings, stack, processors)

        yield factory


@pytest.fixture
async def system(settings: Settings, system_factory: Callable[..., Awaitable[System]]) -> System:
    return await system_factory(settings)


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[PostgresServer]:
    """A migrated PostgreSQL of this test's own, so it can be restarted without touching the others'."""
    server = PostgresServer(tmp_path / "pg")
    server.start()
    await migrate.upgrade_async(make_settings("nats://127.0.0.1:1", server.url))
    yield server
    server.stop()


@pytest.fixture
def records() -> Iterator[LogRecords]:
    """The squall loggers' records during the test, at DEBUG."""
    handler = LogRecords()
    logger = logging.getLogger("squall")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)
