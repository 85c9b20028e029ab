"""The migrated database enforces the same rules as the code (``squall.core.rules``): every value the
rules allow is accepted by its CHECK constraint, and a value outside them is refused."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from squall.core import rules
from tests.integration.harness import plain_dsn

Insert = Callable[[asyncpg.Connection, str], Awaitable[object]]


async def _task_state(conn: asyncpg.Connection, state: str) -> object:
    return await conn.execute(
        "INSERT INTO tasks (id, kind, state, rid) VALUES ($1, 'request', $2, 'r')", uuid.uuid4(), state
    )


async def _task_kind(conn: asyncpg.Connection, kind: str) -> object:
    rid, processing = ("r", None) if kind == "request" else (None, "sum")
    return await conn.execute(
        "INSERT INTO tasks (id, kind, rid, processing) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(),
        kind,
        rid,
        processing,
    )


async def _dependency_kind(conn: asyncpg.Connection, kind: str) -> object:
    name = f"d-{uuid.uuid4().hex[:8]}"
    # A command check may only come from configuration (a constraint of its own).
    sql = "INSERT INTO dependencies (name, kind, target, origin) VALUES ($1, $2, 'x', 'config')"
    return await conn.execute(sql, name, kind)


async def _dependency_state(conn: asyncpg.Connection, state: str) -> object:
    return await conn.execute(
        "INSERT INTO dependencies (name, kind, target, state) VALUES ($1, 'tcp', 'x:1', $2)",
        f"d-{uuid.uuid4().hex[:8]}",
        state,
    )


async def _token_scope(conn: asyncpg.Connection, scope: str) -> object:
    return await conn.execute(
        "INSERT INTO api_tokens (name, token_sha256, scopes) VALUES ($1, $2, $3)",
        f"t-{uuid.uuid4().hex[:8]}",
        uuid.uuid4().hex * 2,
        [scope],
    )


@pytest.mark.parametrize(
    ("insert", "allowed"),
    [
        (_task_state, rules.TASK_STATES),
        (_task_kind, rules.TASK_KINDS),
        (_dependency_kind, rules.DEPENDENCY_KINDS),
        (_dependency_state, rules.DEPENDENCY_STATES),
        (_token_scope, rules.SCOPES),
    ],
    ids=["task_state", "task_kind", "dependency_kind", "dependency_state", "token_scope"],
)
async def test_the_database_allows_exactly_the_rules(
    database_url: str, insert: Insert, allowed: tuple[str, ...]
) -> None:
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        for value in allowed:
            await insert(conn, value)
        with pytest.raises(asyncpg.CheckViolationError):
            await insert(conn, "not-in-the-rules")
    finally:
        await conn.close()
