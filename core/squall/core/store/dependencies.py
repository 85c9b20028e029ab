"""Dependencies: the operator API's reads and writes, and the checks' results (scheduler's leader, or an
operator's check now)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.store.driver import autocommit_connection, iso_time
from squall.core.targets import redact_url

_DEPENDENCY_COLUMNS = (
    "name, kind, target, interval_seconds, timeout_seconds, failure_threshold, recovery_threshold, state, "
    "since, last_error, last_checked_at, consecutive_failures, consecutive_successes, origin"
)


def _dependency(row: Any) -> dict[str, Any]:
    dependency = dict(row._mapping)
    if dependency["kind"] in ("http", "sql"):
        dependency["target"] = redact_url(dependency["target"])
    for key in ("since", "last_checked_at"):
        dependency[key] = iso_time(dependency[key])
    return dependency


async def list_dependencies(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(text(f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies ORDER BY name"))
        return [_dependency(r) for r in rows]


async def get_dependency(engine: AsyncEngine, name: str, raw: bool = False) -> dict[str, Any] | None:
    async with autocommit_connection(engine) as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies WHERE name = :n"), {"n": name}
            )
        ).first()
    if row is None:
        return None
    return dict(row._mapping) if raw else _dependency(row)


async def put_dependency(engine: AsyncEngine, name: str, values: dict[str, Any], origin: str) -> str:
    """Create or replace; answers "created", "replaced" or "refused" (an API call on a configured one)."""
    async with autocommit_connection(engine) as conn:
        row = (
            await conn.execute(
                text(
                    """
                    INSERT INTO dependencies (name, kind, target, interval_seconds, timeout_seconds,
                                              failure_threshold, recovery_threshold, origin)
                    VALUES (:name, :kind, :target, :interval_seconds, :timeout_seconds,
                            :failure_threshold, :recovery_threshold, :origin)
                    ON CONFLICT (name) DO UPDATE SET
                        kind = excluded.kind, target = excluded.target,
                        interval_seconds = excluded.interval_seconds,
                        timeout_seconds = excluded.timeout_seconds,
                        failure_threshold = excluded.failure_threshold,
                        recovery_threshold = excluded.recovery_threshold,
                        state = CASE
                            WHEN (dependencies.kind, dependencies.target) = (excluded.kind, excluded.target)
                            THEN dependencies.state ELSE 'unknown' END
                    WHERE dependencies.origin = :origin
                    RETURNING (xmax = 0) AS created
                    """
                ),
                {**values, "name": name, "origin": origin},
            )
        ).first()
    if row is None:
        return "refused"
    return "created" if row.created else "replaced"


async def delete_dependency(engine: AsyncEngine, name: str) -> str:
    """ "deleted", "missing" or "refused" (configured dependencies are removed from configuration)."""
    async with autocommit_connection(engine) as conn:
        row = (
            await conn.execute(text("SELECT origin FROM dependencies WHERE name = :n"), {"n": name})
        ).first()
        if row is None:
            return "missing"
        if row.origin != "api":
            return "refused"
        await conn.execute(text("DELETE FROM dependencies WHERE name = :n AND origin = 'api'"), {"n": name})
    return "deleted"


async def dependencies_due(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with autocommit_connection(engine) as conn:
        rows = await conn.execute(
            text(
                f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies WHERE last_checked_at IS NULL "
                "OR last_checked_at + make_interval(secs => interval_seconds) <= now()"
            )
        )
        return [dict(r._mapping) for r in rows]


async def record_check(
    engine: AsyncEngine, name: str, state: str, failures: int, successes: int, error: str | None
) -> None:
    async with autocommit_connection(engine) as conn:
        await conn.execute(
            text(
                """
                UPDATE dependencies SET
                    since = CASE WHEN state <> :state THEN now() ELSE since END,
                    state = :state, consecutive_failures = :f, consecutive_successes = :s,
                    last_error = coalesce(:error, CASE WHEN :state = 'up' THEN NULL ELSE last_error END),
                    last_checked_at = now()
                WHERE name = :n
                """
            ),
            {"n": name, "state": state, "f": failures, "s": successes, "error": error},
        )
