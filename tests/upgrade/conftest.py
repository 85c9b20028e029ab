"""Fixtures of the upgrade tests: the previous release, built from this repository's history, and servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from squall.cli.embedded import NatsServer, PostgresServer
from tests.upgrade.release import PREVIOUS_RELEASE, BuiltRelease, build


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> BuiltRelease:
    """The previous release in its own virtual environment (built once per commit under build/upgrade/),
    checked to run its own code: neither the working tree nor its editable install is on its path."""
    built = build(PREVIOUS_RELEASE)
    where = "import importlib.metadata, squall.core; "
    where += "print(squall.core.__file__, importlib.metadata.version('squall'))"
    probe = built.run_python("-c", where, cwd=tmp_path_factory.mktemp("previous-release"))
    assert probe.returncode == 0, probe.stderr
    location, version = probe.stdout.split()
    assert Path(location).is_relative_to(built.venv), (location, built.venv)
    assert version == built.version, (version, built.version)
    how = f"built in {built.build_seconds:.1f} s" if built.build_seconds else "reused"
    print(f"\nprevious release {built.version} ({built.release.commit[:10]}): {how}, {built.python}")
    return built


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[NatsServer, PostgresServer]]:
    """A fresh NATS JetStream and an empty PostgreSQL (no migration: the previous release makes its schema).
    The rehearsal always starts its own: --nats-url and --database-url do not apply to it."""
    nats = NatsServer(tmp_path / "nats")
    postgres = PostgresServer(tmp_path / "pg")
    nats.start()
    try:
        postgres.start()
        try:
            yield nats, postgres
        finally:
            postgres.stop()
    finally:
        nats.stop()
