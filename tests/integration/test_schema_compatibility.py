"""What the services and ``squall migrate --check`` do with a database that is not at this code's revision
(real PostgreSQL, the real ``squall`` command and services): behind or empty, run the migrations; ahead
with migrations that keep this code working (a rolling upgrade), run; ahead past that, refuse."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import pytest
from alembic import command

from squall.core import migrate
from squall.core.settings import Settings, load_settings
from tests.integration.harness import ServiceProcesses, plain_dsn, squall_cli, wait_for

HEAD = migrate.code_revisions()[-1]
NEXT = f"{int(HEAD) + 1:04d}"
AFTER_NEXT = f"{int(HEAD) + 2:04d}"


async def _pretend_migrated_by_a_later_release(database_url: str, revision: str, oldest_code: str) -> None:
    """What a later release's migrations leave: a revision this code does not know, and the oldest code
    revision they keep working."""
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
        await conn.execute("UPDATE schema_compatibility SET oldest_code_revision = $1", oldest_code)
    finally:
        await conn.close()


async def _downgrade(database_url: str, revision: str) -> None:
    # Alembic's env.py runs its own event loop: not in the test's.
    config = migrate.alembic_config(load_settings(database_url=database_url))
    await asyncio.to_thread(command.downgrade, config, revision)


def _check(database_url: str) -> subprocess.CompletedProcess[str]:
    return squall_cli(load_settings(database_url=database_url), "migrate", "--check")


async def test_check_passes_at_this_codes_revision(database_url: str) -> None:
    done = _check(database_url)
    assert (done.returncode, done.stdout) == (
        0,
        f"current: the database schema is at revision {HEAD}, this code's newest\n",
    )


async def test_check_fails_when_the_database_is_behind_and_names_the_pending_migrations(
    database_url: str,
) -> None:
    await _downgrade(database_url, "0015")
    done = _check(database_url)
    assert done.returncode == 1
    assert done.stdout.startswith("behind: the database schema is at revision 0015, 2 migration(s) behind")
    assert f"(0016, {HEAD}): run `squall migrate`" in done.stdout


async def test_check_fails_on_a_database_never_migrated(database_url: str) -> None:
    await _downgrade(database_url, "base")
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        await conn.execute("DROP TABLE alembic_version")
    finally:
        await conn.close()
    done = _check(database_url)
    assert (done.returncode, done.stdout) == (
        1,
        "empty: the database has no Squall schema: run `squall migrate`\n",
    )


async def test_check_passes_when_a_later_release_keeps_this_code_working(database_url: str) -> None:
    await _pretend_migrated_by_a_later_release(database_url, NEXT, oldest_code=HEAD)
    done = _check(database_url)
    assert done.returncode == 0
    assert done.stdout.startswith(f"ahead: the database schema is at revision {NEXT}, newer than")


async def test_check_fails_when_a_later_release_no_longer_keeps_this_code_working(database_url: str) -> None:
    await _pretend_migrated_by_a_later_release(database_url, AFTER_NEXT, oldest_code=NEXT)
    done = _check(database_url)
    assert done.returncode == 1
    assert done.stdout == (
        f"incompatible: the database schema is at revision {AFTER_NEXT}, which needs code of revision "
        f"{NEXT} or newer; this code knows up to {HEAD}: run a newer Squall\n"
    )


@pytest.mark.parametrize("role", ["gateway", "processor", "scheduler"])
async def test_a_service_refuses_to_start_against_a_schema_that_no_longer_keeps_it_working(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    await _pretend_migrated_by_a_later_release(settings.database_url, AFTER_NEXT, oldest_code=NEXT)
    services = ServiceProcesses(settings, tmp_path)
    process = services.start(role, f"{role}-old")
    try:
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        services.stop_all()
    log = (tmp_path / f"{role}-old.log").read_text()
    assert code == 1, log
    assert f"needs code of revision {NEXT} or newer; this code knows up to {HEAD}" in log
    assert "Traceback" not in log


async def test_a_service_runs_against_a_schema_a_rolling_upgrade_migrated_ahead(
    settings: Settings, tmp_path: Path
) -> None:
    await _pretend_migrated_by_a_later_release(settings.database_url, NEXT, oldest_code=HEAD)
    services = ServiceProcesses(settings, tmp_path)
    log = tmp_path / "processor-old.log"
    process = services.start("processor", "processor-old")
    try:

        async def consuming_or_gone() -> bool:
            return "processor-old consuming" in log.read_text() or process.poll() is not None

        await wait_for(consuming_or_gone, 30, what="the processor consuming")
        assert process.poll() is None, log.read_text()
        assert f"newer than this code's {HEAD}" in log.read_text()
    finally:
        services.stop_all()


async def test_a_service_waits_for_the_database_to_check_its_schema(
    settings: Settings, tmp_path: Path
) -> None:
    unreachable = settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:9/none"})
    services = ServiceProcesses(unreachable, tmp_path)
    log = tmp_path / "processor-waiting.log"
    process = services.start("processor", "processor-waiting")
    try:

        async def retried() -> bool:
            return log.read_text().count("database not reachable to check its schema") >= 2

        await wait_for(retried, 30, what="two attempts to reach the database")
        assert process.poll() is None, log.read_text()
    finally:
        services.stop_all()
    assert process.returncode == 0
    assert "stopped before the database answered" in log.read_text()
