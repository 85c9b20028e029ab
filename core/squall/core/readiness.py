"""Readiness of a service: are NATS and PostgreSQL reachable from here?"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def dependency_problems(nc: Client, engine: AsyncEngine) -> list[str]:
    problems = []
    if not nc.is_connected:
        problems.append("nats: not connected")
    try:
        async with asyncio.timeout(2.0), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        problems.append(f"postgresql: {type(exc).__name__}")
    return problems
