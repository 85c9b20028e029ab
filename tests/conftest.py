"""Test options shared by every suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("squall")
    group.addoption(
        "--database-url",
        default=None,
        help="use this PostgreSQL server (a database per test is created on it) instead of an embedded one",
    )
    group.addoption(
        "--nats-url",
        default=None,
        help="use this NATS JetStream server (Squall's streams are reset per test) instead of one per test",
    )
