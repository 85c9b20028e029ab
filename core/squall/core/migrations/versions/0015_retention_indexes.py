"""finished work is found by age for retention: requests by processed_at, poll tasks by finished_at

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 17:00:00

The scheduler's leader deletes finished work older than its retention period (``store.retention``). Each
pass takes the oldest processed requests and finished poll tasks first; without these indexes that is a
scan of the whole table. Both are partial: only processed requests and finished poll tasks have entries,
so intake and the processors' first writes of a row add nothing to them.

Built concurrently: writes go on while a large table is indexed. A build that failed (it leaves an invalid
index) is dropped and done again when the migration is run again.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from squall.core.migrations import drop_index_if_invalid

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index_if_invalid("requests_processed_at")
        op.create_index(
            "requests_processed_at",
            "requests",
            ["processed_at"],
            postgresql_where=text("processed"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        drop_index_if_invalid("tasks_poll_finished_at")
        op.create_index(
            "tasks_poll_finished_at",
            "tasks",
            ["finished_at"],
            postgresql_where=text("kind = 'poll' AND finished_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "tasks_poll_finished_at", table_name="tasks", postgresql_concurrently=True, if_exists=True
        )
        op.drop_index(
            "requests_processed_at", table_name="requests", postgresql_concurrently=True, if_exists=True
        )
