"""Client CPU of one statement through SQLAlchemy's execution and on asyncpg's connection itself
(``driver.fetch_on_driver``), on an embedded PostgreSQL of its own (127.0.0.1 only), statements one after
another on the hot statements' pool.

    python -m bench.driver [--number 2000] [--repeat 3]

Rows: the pool's checkout and return alone (through an ``AsyncConnection``, and of the pool's connection
itself, as ``fetch_on_driver`` takes it); ``SELECT 1`` on asyncpg alone, through SQLAlchemy's
``execute`` and ``exec_driver_sql``, and on the driver connection after SQLAlchemy's checkout; the
intake INSERT of 5 requests through SQLAlchemy and through ``fetch_on_driver``. Each figure is the best of
``--repeat`` rounds of ``--number`` statements, in microseconds of this process's CPU per statement (its
event loop's share included)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from bench.db import parse_int_options, run_on_scratch_postgres
from squall.core.store import driver, intake

SELECT_1 = text("SELECT 1")


def submissions(count: int) -> list[intake.Submitted]:
    return [
        intake.Submitted(
            uuid.uuid4(), f"bench-{uuid.uuid4().hex}", False, [{"number": 1, "job": "sum"}], b"{}"
        )
        for _ in range(count)
    ]


async def cpu_micros(step: Callable[[], Awaitable[object]], number: int, repeat: int) -> float:
    for _ in range(min(100, number)):
        await step()
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(number):
            await step()
        best = min(best, (time.process_time() - started) / number * 1e6)
    return best


async def measure(engine: AsyncEngine, number: int, repeat: int) -> None:
    async with engine.connect() as held:
        asyncpg_connection = (await held.get_raw_connection()).driver_connection
        assert asyncpg_connection is not None

        async def asyncpg_alone() -> object:
            return await asyncpg_connection.fetch("SELECT 1")

        alone = await cpu_micros(asyncpg_alone, number, repeat)

    async def checkout() -> None:
        async with driver.autocommit_connection(engine):
            pass

    async def pool_checkout() -> None:
        pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
        await greenlet_spawn(pooled.close)

    async def sqlalchemy_execute() -> object:
        async with driver.autocommit_connection(engine) as conn:
            return await conn.execute(SELECT_1)

    async def sqlalchemy_driver_sql() -> object:
        async with driver.autocommit_connection(engine) as conn:
            return await conn.exec_driver_sql("SELECT 1")

    async def on_driver() -> object:
        return await driver.fetch_on_driver(engine, SELECT_1, {})

    async def intake_sqlalchemy() -> object:
        batch = submissions(5)
        params = intake._accept_params(batch, [intake.items_hash(s.items) for s in batch])
        async with driver.autocommit_connection(engine) as conn:
            return (await conn.execute(intake._ACCEPT_MANY, params)).all()

    async def intake_on_driver() -> object:
        batch = submissions(5)
        params = intake._accept_params(batch, [intake.items_hash(s.items) for s in batch])
        return await driver.fetch_on_driver(engine, intake._ACCEPT_MANY, params)

    rows = {
        "checkout and return": checkout,
        "checkout and return, the pool's connection itself": pool_checkout,
        "SELECT 1, SQLAlchemy execute": sqlalchemy_execute,
        "SELECT 1, SQLAlchemy exec_driver_sql": sqlalchemy_driver_sql,
        "SELECT 1, fetch_on_driver": on_driver,
        "intake INSERT of 5, SQLAlchemy execute": intake_sqlalchemy,
        "intake INSERT of 5, fetch_on_driver": intake_on_driver,
    }
    print(f"SELECT 1, asyncpg alone: {alone:.0f} us")
    for name, step in rows.items():
        print(f"{name}: {await cpu_micros(step, number, repeat):.0f} us")


def main() -> None:
    args = parse_int_options(
        __doc__, number=(2000, "statements per round"), repeat=(3, "rounds (the best is kept)")
    )
    run_on_scratch_postgres(
        "driver", lambda engine: measure(engine, args.number, args.repeat), hot_statements=True
    )


if __name__ == "__main__":
    main()
