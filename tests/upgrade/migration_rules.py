"""The expand/contract rule, read off the SQL a release's migrations run (Alembic's offline mode): what
would break the previous release's code, running beside them during a rolling update (docs/design.md,
"Releases and upgrades"). The upgrade rehearsal proves the same under load; this names the statement."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

from alembic import command

from squall.core import migrate
from squall.core.settings import load_settings

# Each: what it breaks for code that is running while the migration lands.
BREAKING = {
    r"\bDROP\s+TABLE\b": "drops a table the previous release may use",
    r"\bDROP\s+COLUMN\b": "drops a column the previous release may read or write",
    r"\bRENAME\b": "renames what the previous release names",
    r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b": "changes a column's type (and rewrites the table)",
    r"\bSET\s+NOT\s+NULL\b": "makes a column required that the previous release may leave empty",
    r"\bADD\s+COLUMN\b(?:(?!\bDEFAULT\b)[^;])*\bNOT\s+NULL\b(?:(?!\bDEFAULT\b)[^;])*;": (
        "adds a required column without a default, which the previous release's inserts lack"
    ),
    r"\bADD\s+CONSTRAINT\b(?:(?!\bNOT\s+VALID\b)[^;])*;": (
        "adds a constraint without NOT VALID: the previous release's writes may violate it, and checking "
        "the existing rows locks the table"
    ),
    r"\bCREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)(IF\s+NOT\s+EXISTS\s+)?(\w+)\s+ON\s+(\w+)": (
        "builds an index without CONCURRENTLY: writes to the table wait until it is built"
    ),
}
_CONTRACT = re.compile(r"UPDATE schema_compatibility SET oldest_code_revision = '(\d{4})'")
_CREATED = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
_STEP = re.compile(r"^-- Running upgrade (\S+) -> (\S+)$", re.MULTILINE)


def newest_revision_at(commit: str) -> str:
    """The newest migration of the tree at ``commit`` of this repository."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "core/squall/core/migrations/versions/"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return max(Path(name).name[:4] for name in listing.split() if Path(name).name[:4].isdigit())


def offline_sql(since: str) -> dict[str, str]:
    """The SQL of each migration after revision ``since``, by revision (no database needed)."""
    out = io.StringIO()
    config = migrate.alembic_config(load_settings(database_url="postgresql://offline@127.0.0.1:1/offline"))
    config.output_buffer = out
    command.upgrade(config, f"{since}:head", sql=True)
    parts = _STEP.split(out.getvalue())
    # [before, from, to, sql, from, to, sql, ...]
    return {parts[i + 1]: parts[i + 2] for i in range(1, len(parts) - 2, 3)}


def violations(revision: str, sql: str, previous_release_head: str) -> list[str]:
    """What in one migration's SQL breaks the previous release. A contract migration (one that records,
    with ``require_code_from``, that older code no longer runs) may break code older than the previous
    release, never the previous release itself."""
    contract = _CONTRACT.search(sql)
    if contract:
        if contract.group(1) > previous_release_head:
            return [
                f"{revision}: requires code from {contract.group(1)}: the previous release would refuse "
                "to run"
            ]
        return []
    created = {name.lower() for name in _CREATED.findall(sql)}
    found = []
    for pattern, why in BREAKING.items():
        for match in re.finditer(pattern, sql, re.IGNORECASE):
            if match.lastindex and match.lastindex >= 4 and match.group(4).lower() in created:
                continue  # an index on a table made by the same migration: nothing writes to it yet
            found.append(f"{revision}: {why}: {' '.join(match.group(0).split())[:120]}")
    return found
