"""Duty: check every dependency that is due a check, and record its state (the other replicas only read
the shared state)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import checks
from squall.core.store import dependencies

CHECK_WAKE_SECONDS = 0.25  # how often the leader looks for dependencies due a check


class DependencyChecks:
    name = "dependency checks"
    every_seconds = CHECK_WAKE_SECONDS

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def run_once(self) -> None:
        due = await dependencies.dependencies_due(self.engine)
        await asyncio.gather(*(checks.check_and_record(self.engine, d) for d in due))
