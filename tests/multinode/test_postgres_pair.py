"""The replicated PostgreSQL of the multi-node tests, step by step: synchronous streaming, the primary
killed, the standby promoted, the old primary rejoining as its standby, and a failback; and where Squall's
engine, given both hosts with ``target_session_attrs=read-write``, connects at each step."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.multinode.postgres_pair import PostgresPair


async def writable_port(engine: AsyncEngine) -> int:
    """The port of the server a new connection of the engine reaches, after checking it takes a write."""
    await engine.dispose()  # new connections only
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t VALUES (inet_server_port())"))
        return int((await conn.execute(text("SELECT inet_server_port()"))).scalar_one())


@pytest.mark.multinode
async def test_failover_and_failback_steps(postgres_pair: PostgresPair) -> None:
    pair = postgres_pair
    a, b = pair.nodes["a"], pair.nodes["b"]
    assert not pair.in_recovery(a) and pair.in_recovery(b)
    assert pair.psql(a, "SELECT application_name, sync_state FROM pg_stat_replication") == "node_b|sync"
    assert pair.psql(a, "SHOW synchronous_commit") == "on"
    pair.psql(a, "CREATE TABLE t (port int)")
    engine = create_async_engine(pair.url, pool_size=1, max_overflow=0)
    try:
        assert await writable_port(engine) == a.port
        # Committed on the primary means on the standby too (synchronous): readable there at once.
        assert pair.psql(b, "SELECT count(*) FROM t") == "1"

        pair.kill_primary()
        await engine.dispose()
        with pytest.raises(OSError):  # the first host refuses; the second, a standby, is not taken
            async with engine.connect():
                pass
        with pytest.raises(OSError):
            await asyncpg.connect(pair.dsn)

        pair.promote()
        assert pair.primary is b and not pair.in_recovery(b)
        assert await writable_port(engine) == b.port

        pair.rejoin()  # a is b's synchronous standby now
        assert pair.in_recovery(a)
        assert pair.psql(a, "SELECT count(*) FROM t") == "2"
        assert await writable_port(engine) == b.port  # a host in recovery is never chosen, though first

        pair.kill_primary()  # fail back
        pair.promote()
        assert pair.primary is a
        assert await writable_port(engine) == a.port
        per_node = (
            f"SELECT count(*) FILTER (WHERE port = {a.port}), count(*) FILTER (WHERE port = {b.port}) FROM t"
        )
        assert pair.psql(a, per_node) == "2|2"  # every write kept across both failovers
    finally:
        await engine.dispose()
