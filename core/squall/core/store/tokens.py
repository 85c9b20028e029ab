"""API tokens: only their SHA-256 is stored; created, found, listed and revoked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.store.driver import autocommit_connection, iso_time


class TokenExists(Exception):
    """A token with this name exists (revoked ones too: names are not reused)."""


async def create_token(
    engine: AsyncEngine,
    name: str,
    digest: str,
    scopes: Sequence[str],
    rate_per_second: float | None,
    burst: int | None,
) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(
            text(
                "INSERT INTO api_tokens (name, token_sha256, scopes, rate_per_second, burst) "
                "VALUES (:name, :digest, :scopes, :rate, :burst) ON CONFLICT (name) DO NOTHING"
            ),
            {"name": name, "digest": digest, "scopes": list(scopes), "rate": rate_per_second, "burst": burst},
        )
        if inserted.rowcount == 0:
            raise TokenExists(name)


async def find_token(engine: AsyncEngine, digest: str) -> Any:
    """The live (not revoked) token with this digest, or None."""
    async with autocommit_connection(engine) as conn:
        result = await conn.execute(
            text(
                "SELECT name, scopes, rate_per_second, burst FROM api_tokens "
                "WHERE token_sha256 = :digest AND revoked_at IS NULL"
            ),
            {"digest": digest},
        )
        return result.first()


async def list_tokens(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with autocommit_connection(engine) as conn:
        result = await conn.execute(
            text(
                "SELECT name, scopes, rate_per_second, burst, created_at, revoked_at "
                "FROM api_tokens ORDER BY created_at, name"
            )
        )
        return [
            {
                "name": row.name,
                "scopes": list(row.scopes),
                "rate_per_second": row.rate_per_second,
                "burst": row.burst,
                "created_at": iso_time(row.created_at),
                "revoked_at": iso_time(row.revoked_at),
            }
            for row in result
        ]


async def revoke_token(engine: AsyncEngine, name: str) -> bool:
    """Revoke a token; False when no live token has this name."""
    async with autocommit_connection(engine) as conn:
        result = await conn.execute(
            text("UPDATE api_tokens SET revoked_at = now() WHERE name = :name AND revoked_at IS NULL"),
            {"name": name},
        )
        return bool(result.rowcount)
