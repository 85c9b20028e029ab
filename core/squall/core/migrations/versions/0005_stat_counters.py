"""stat_totals and stat_deltas: request and item counts kept transactionally, so reading them stays cheap

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:30:00

Counting rows (``count(*)`` over items) costs time proportional to the history: millions of rows. Instead
every transaction that records requests or changes an item's outcome appends its net change to
``stat_deltas`` (an insert: no row lock, so concurrent processors never wait on a counter); processors fold
the deltas into ``stat_totals`` every few seconds. A reader sums totals and the few deltas not folded yet.
The counts are seeded here from the rows already present.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    counter_check = "counter IN ('requests_recorded', 'requests_processed', 'items_recorded', 'items_done', 'items_failed')"
    op.create_table(
        "stat_totals",
        sa.Column("counter", sa.Text(), nullable=False),
        sa.Column("processing", sa.Text(), nullable=False, comment="'' for request counters."),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("counter", "processing", name="stat_totals_pkey"),
        sa.CheckConstraint(counter_check, name="stat_totals_counter"),
        comment="Folded counts (see stat_deltas).",
    )
    # No key on purpose: rows are only appended, summed and deleted all together when folded.
    op.create_table(
        "stat_deltas",
        sa.Column("counter", sa.Text(), nullable=False),
        sa.Column("processing", sa.Text(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(counter_check, name="stat_deltas_counter"),
        comment="Changes of the counts not folded into stat_totals yet.",
    )
    # Dead tasks are counted live: this index keeps that count as small as the dead-letter list.
    op.create_index(
        "tasks_dead_processing", "tasks", ["processing"], postgresql_where=sa.text("state = 'dead'")
    )
    op.execute(
        """
        INSERT INTO stat_totals (counter, processing, n)
        SELECT 'requests_recorded', '', count(*) FROM requests WHERE recorded_at IS NOT NULL
        UNION ALL SELECT 'requests_processed', '', count(*) FROM requests WHERE processed
        UNION ALL SELECT 'items_recorded', job, count(*) FROM items GROUP BY job
        UNION ALL SELECT 'items_done', job, count(*) FROM items WHERE state = 'done' GROUP BY job
        UNION ALL SELECT 'items_failed', job, count(*) FROM items WHERE state = 'failed' GROUP BY job
        """
    )


def downgrade() -> None:
    op.drop_index("tasks_dead_processing", table_name="tasks", postgresql_where=sa.text("state = 'dead'"))
    op.drop_table("stat_deltas")
    op.drop_table("stat_totals")
