"""How statements reach PostgreSQL: connections that commit each statement on its own, the hottest
statements run on the pooled connection's asyncpg connection, and the encodings of parameters and results
the other modules share."""

from __future__ import annotations

import datetime as dt
import functools
import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn


def result_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value)


def embedded_json(results: Iterable[str | None]) -> list[orjson.Fragment | None]:
    """Results that are JSON text already, to embed as they are in a JSON document."""
    return [None if r is None else orjson.Fragment(r) for r in results]


_AUTOCOMMIT: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def autocommit_connection(engine: AsyncEngine) -> AsyncConnection:
    """A connection whose statements each commit on their own: no BEGIN/COMMIT round trips around a
    statement that is atomic by itself (every read here, and the intake's single INSERT)."""
    autocommit = _AUTOCOMMIT.get(engine)
    if autocommit is None:  # made once per engine: building it per request was a measurable share of CPU
        autocommit = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return autocommit.connect()


_DRIVER_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _on_driver(statement: TextClause) -> tuple[str, tuple[str, ...]]:
    """A ``text()`` statement as asyncpg takes it: ``$n`` placeholders, and the names they stand for."""
    compiled = statement.compile(dialect=_DRIVER_DIALECT)
    return compiled.string, tuple(compiled.positiontup or ())


async def fetch_on_driver(engine: AsyncEngine, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Run one of the hottest statements (the intake INSERT, the recording) on the pooled connection's
    asyncpg connection itself, autocommit: SQLAlchemy's execution around it (parameters, execution
    context, result, greenlet) was a large share of the gateway's and the processor's CPU per request
    (``python -m bench.driver``; figures in docs/history/benchmarks.md). The pool, its bounds and its
    metrics stay SQLAlchemy's; asyncpg prepares the statement once per connection.
    A connection whose statement failed or was cancelled is invalidated: SQLAlchemy does that only for the
    errors it sees. asyncpg's own errors are raised (``http.is_unavailable`` knows them)."""
    sql, names = _on_driver(statement)
    # The pool's connection itself, not a Connection around it: less client CPU per checkout and return
    # (python -m bench.driver). Run in a greenlet: the pool waits on asyncio.
    pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        driver = pooled.driver_connection
        assert driver is not None
        rows: list[Any] = await driver.fetch(sql, *[params[name] for name in names])
        return rows
    except BaseException as exc:
        await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)
        raise
    finally:
        await greenlet_spawn(pooled.close)


def iso_time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def pg_array(values: Sequence[int]) -> str:
    """Integers as a PostgreSQL array literal: cast in SQL, it costs a fraction of unpacking a JSON array
    element by element (migration 0010)."""
    if isinstance(values, range):
        if values.start == 0 and values.step == 1:
            return _counting(values.stop)  # a whole request's positions
        values = list(values)
    return "{" + orjson.dumps(values).decode()[1:-1] + "}"


@functools.lru_cache(maxsize=64)
def _counting(count: int) -> str:
    return "{" + ",".join(map(str, range(count))) + "}"


def results_array(values: Sequence[Any]) -> orjson.Fragment | None:
    """Results as one JSON array, encoded at once; None when some value is not plain JSON to orjson (an
    integer beyond 64 bits), for :func:`result_json` to encode one by one."""
    try:
        return orjson.Fragment(orjson.dumps(values))
    except TypeError:
        return None
