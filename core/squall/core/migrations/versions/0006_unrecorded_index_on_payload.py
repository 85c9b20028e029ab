"""requests awaiting their recording are indexed by ``payload IS NOT NULL``, not ``recorded_at IS NULL``

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 00:20:00

The partial index of unrecorded requests (for the processors' sweep and the backlog count) was defined by
``recorded_at IS NULL``. Recording a batch says ``WHERE task_id = ... AND recorded_at IS NULL``, which that
predicate matches, so whenever the statistics said few requests were unrecorded (always, right after an
ANALYZE in steady state) the planner read the whole partial index, dead entries of every request recorded
since the last vacuum included, and hash-joined it: 35 million index entries read for 22,000 requests in
a 30 s run. ``payload IS NOT NULL`` selects the same rows (constraint requests_payload_until_recorded), and
no statement that looks rows up by key filters on it, so those take the unique index on task_id.

The index carries item_count, so the items waiting in unrecorded requests (part of the backlog the
gateway's admission control bounds) are summed from the index alone.

Built concurrently: writes go on while a large table is indexed. A build that failed (it leaves an invalid
index) is dropped and done again when the migration is run again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from squall.core.migrations import drop_index_if_invalid

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index_if_invalid("requests_awaiting_record")
        op.create_index(
            "requests_awaiting_record",
            "requests",
            ["created_at"],
            postgresql_include=["item_count"],
            postgresql_where=sa.text("payload IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(
            "requests_unrecorded", table_name="requests", postgresql_concurrently=True, if_exists=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index_if_invalid("requests_unrecorded")
        op.create_index(
            "requests_unrecorded",
            "requests",
            ["created_at"],
            postgresql_where=sa.text("recorded_at IS NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(
            "requests_awaiting_record", table_name="requests", postgresql_concurrently=True, if_exists=True
        )
