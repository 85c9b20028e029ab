"""The hottest statements run on asyncpg's connection under SQLAlchemy's pool (driver.fetch_on_driver):
a connection lost under them fails that statement alone, as unavailable, and is not handed out again."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from squall.core import db, http
from squall.core.store import intake, recording
from tests.integration.harness import make_settings


def submitted() -> intake.Submitted:
    return intake.Submitted(
        uuid.uuid4(), f"driver-{uuid.uuid4().hex}", False, [{"number": 1, "job": "sum"}], b"{}"
    )


async def test_a_lost_connection_fails_one_statement_and_the_next_gets_a_new_one(database_url: str) -> None:
    settings = make_settings("nats://127.0.0.1:1", database_url)
    hot = db.create_engine(settings, pool_size=1, hot_statements=True)  # one connection: always the same
    admin = db.create_engine(settings)
    backend = text("SELECT pg_backend_pid()")
    try:
        first = submitted()
        assert [a.task_id for a in await intake.accept_requests(hot, [first])] == [first.task_id]
        async with hot.connect() as conn:
            pid = (await conn.execute(backend)).scalar_one()
        async with admin.connect() as conn:
            # Waits (up to 5 s) until the backend is gone: the next statement cannot outrun it.
            ended = text("SELECT pg_terminate_backend(:p, 5000)")
            assert (await conn.execute(ended, {"p": pid})).scalar_one()

        with pytest.raises(Exception) as lost:
            await intake.accept_requests(hot, [submitted()])
        assert http.is_unavailable(lost.value), repr(lost.value)

        again = submitted()
        accepted = await intake.accept_requests(hot, [again])
        assert [(a.task_id, a.created) for a in accepted] == [(again.task_id, True)]
        async with hot.connect() as conn:
            assert (await conn.execute(backend)).scalar_one() != pid
        recorded = await recording.record_requests(hot, [again.task_id], recording.NewItems(), {})
        assert [r.task_id for r in recorded] == [again.task_id]
    finally:
        await hot.dispose()
        await admin.dispose()
