"""``squall migrate``: bring the database schema to the latest Alembic revision; and what the services and
``squall migrate --check`` make of a database whose revision is not this code's (docs/design.md, "Releases
and upgrades")."""

from __future__ import annotations

import asyncio
import enum
import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from squall.core.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


async def upgrade_async(settings: Settings, revision: str = "head") -> None:
    """From inside a running event loop (env.py runs its own loop, so give it a thread)."""
    await asyncio.to_thread(upgrade, settings, revision)


@functools.cache
def code_revisions() -> tuple[str, ...]:
    """This code's migrations, oldest first."""
    script = ScriptDirectory(str(MIGRATIONS))
    return tuple(reversed([s.revision for s in script.walk_revisions()]))


class Verdict(enum.Enum):
    CURRENT = "current"
    # Newer migrations that keep this code working: what a rolling upgrade creates.
    AHEAD = "ahead"
    BEHIND = "behind"
    INCOMPATIBLE = "incompatible"
    EMPTY = "empty"

    @property
    def runnable(self) -> bool:
        """Whether this code may run against such a database."""
        return self in (Verdict.CURRENT, Verdict.AHEAD)


@dataclass(frozen=True)
class SchemaState:
    database: str | None  # the database's Alembic revision; None when it was never migrated
    oldest_code: str | None  # the oldest code revision the database's migrations keep working
    code: tuple[str, ...]  # this code's revisions, oldest first

    @property
    def head(self) -> str:
        return self.code[-1]

    @property
    def verdict(self) -> Verdict:
        if self.database is None:
            return Verdict.EMPTY
        if self.database == self.head:
            return Verdict.CURRENT
        if self.database in self.code:
            return Verdict.BEHIND
        if self.oldest_code is not None and self.oldest_code <= self.head:
            return Verdict.AHEAD
        return Verdict.INCOMPATIBLE

    def describe(self) -> str:
        match self.verdict:
            case Verdict.CURRENT:
                return f"the database schema is at revision {self.head}, this code's newest"
            case Verdict.AHEAD:
                return (
                    f"the database schema is at revision {self.database}, newer than this code's "
                    f"{self.head}, and keeps code from revision {self.oldest_code} on working (a rolling "
                    "upgrade)"
                )
            case Verdict.BEHIND:
                pending = self.code[self.code.index(str(self.database)) + 1 :]
                return (
                    f"the database schema is at revision {self.database}, {len(pending)} migration(s) behind "
                    f"this code ({', '.join(pending)}): run `squall migrate`"
                )
            case Verdict.INCOMPATIBLE:
                return (
                    f"the database schema is at revision {self.database}, which needs code of revision "
                    f"{self.oldest_code or 'unknown'} or newer; this code knows up to {self.head}: "
                    "run a newer Squall"
                )
            case Verdict.EMPTY:
                return "the database has no Squall schema: run `squall migrate`"


async def schema_state(conn: AsyncConnection) -> SchemaState:
    database = oldest_code = None
    if await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
        database = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    if await conn.scalar(text("SELECT to_regclass('schema_compatibility') IS NOT NULL")):
        oldest_code = await conn.scalar(text("SELECT oldest_code_revision FROM schema_compatibility"))
    return SchemaState(database, oldest_code, code_revisions())
