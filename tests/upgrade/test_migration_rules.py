"""This release's migrations only expand the previous release's schema (read off their SQL), and the rule
tells a breaking statement from a safe one."""

from __future__ import annotations

import pytest

from squall.core import migrate
from tests.upgrade.migration_rules import newest_revision_at, offline_sql, violations
from tests.upgrade.release import PREVIOUS_RELEASE


def test_this_releases_migrations_keep_the_previous_release_working() -> None:
    previous = newest_revision_at(PREVIOUS_RELEASE.commit)
    steps = offline_sql(previous)
    assert list(steps) == list(migrate.code_revisions()[migrate.code_revisions().index(previous) + 1 :])
    assert [v for revision, sql in steps.items() for v in violations(revision, sql, previous)] == []


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE requests DROP COLUMN processed_at;",
        "DROP TABLE api_tokens;",
        "ALTER TABLE items RENAME COLUMN result TO outcome;",
        "ALTER TABLE requests RENAME TO submissions;",
        "ALTER TABLE items ALTER COLUMN number TYPE numeric;",
        "ALTER TABLE items ALTER COLUMN result SET NOT NULL;",
        "ALTER TABLE requests ADD COLUMN tenant TEXT NOT NULL;",
        "ALTER TABLE items ADD CONSTRAINT positive CHECK (number > 0);",
        "CREATE INDEX items_by_job ON items (job);",
        "CREATE UNIQUE INDEX IF NOT EXISTS tasks_rid ON tasks (rid);",
        "UPDATE schema_compatibility SET oldest_code_revision = '0017' WHERE oldest_code_revision < '0017';",
    ],
)
def test_a_statement_that_breaks_the_previous_release_is_named(sql: str) -> None:
    assert len(violations("0099", sql, "0016")) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE requests ADD COLUMN tenant TEXT;",
        "ALTER TABLE requests ADD COLUMN priority SMALLINT DEFAULT 5 NOT NULL;",
        "ALTER TABLE items ADD CONSTRAINT positive CHECK (number > 0) NOT VALID;",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_by_job ON items (job);",
        "CREATE TABLE limits (name TEXT PRIMARY KEY);\nCREATE INDEX limits_name ON limits (name);",
        "DROP INDEX CONCURRENTLY IF EXISTS items_by_job;",
        # A contract step that only older releases than the previous one notice.
        "UPDATE schema_compatibility SET oldest_code_revision = '0016' WHERE oldest_code_revision < '0016';\n"
        "ALTER TABLE items DROP COLUMN legacy;",
    ],
)
def test_an_expanding_statement_passes(sql: str) -> None:
    assert violations("0099", sql, "0016") == []
