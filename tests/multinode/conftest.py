"""Fixtures of the multi-node tests: servers of their own (``--database-url`` and ``--nats-url`` do not
apply: these tests kill and promote nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from squall.cli.embedded import NatsServer
from tests.integration.conftest import own_postgres
from tests.multinode.postgres_pair import PostgresPair

__all__ = ["nats_server", "own_postgres", "postgres_pair"]


@pytest.fixture
def postgres_pair(tmp_path: Path) -> Iterator[PostgresPair]:
    pair = PostgresPair(tmp_path / "pg")
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()
