"""a request's failed items are found by index: retention tells dead letters from finished work cheaply

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 20:55:00

Retention keeps a request with a failed item for the dead-letter period (``store.retention``): each batch
asks, for every candidate request, whether it has a failed item. With no index on failed items PostgreSQL
answered that by reading the whole ``items`` table once per batch (a hashed subplan): a backlog of 3.3
million requests with their items took a 0.4 s scan for every 1,000 requests deleted, and intake's latency
suffered while it ran. The index is partial: only failed items have entries, so it stays small and the
processors' writes of pending and done items add nothing to it.

Built concurrently: writes go on while a large table is indexed. A build that failed (it leaves an invalid
index) is dropped and done again when the migration is run again.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from squall.core.migrations import drop_index_if_invalid

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index_if_invalid("items_failed")
        op.create_index(
            "items_failed",
            "items",
            ["request_task_id"],
            postgresql_where=text("state = 'failed'"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("items_failed", table_name="items", postgresql_concurrently=True, if_exists=True)
