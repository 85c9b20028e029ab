"""tasks are listed newest first from an index on (created_at, id), not by sorting the whole table

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 02:00:00

``GET /v1/tasks`` pages through tasks newest first (``ORDER BY created_at DESC, id DESC``, the next page
after a ``(created_at, id)`` cursor), and no index held that order: every page, the first one included,
read and sorted the whole table. 317 ms per page at 2,000,000 tasks, growing with the table and taking a
PostgreSQL core meanwhile; 4 ms with this index (docs/benchmarks.md). The price is one more index entry
per task written: a task's row is inserted once and updated once or twice, and none of those updates is
HOT (its state is indexed), so each writes an entry here too.

Built concurrently: writes go on while a large table is indexed. A build that failed (it leaves an invalid
index) is dropped and done again when the migration is run again.
"""

from collections.abc import Sequence

from alembic import op

from squall.core.migrations import drop_index_if_invalid

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index_if_invalid("tasks_newest_first")
        op.create_index(
            "tasks_newest_first",
            "tasks",
            ["created_at", "id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("tasks_newest_first", table_name="tasks", postgresql_concurrently=True, if_exists=True)
