"""the built-in sum and mul poll batches of 5,000 items instead of 1,000

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 17:30:00

A poll task costs about the same besides its arithmetic whatever its size: a dozen round trips to
PostgreSQL, its JetStream message and the scheduler's emission. At 1,000 items per task those bounded how
fast ``sum`` drained a backlog (the P2 batch benchmark: 58,406 items/s, the backlog outliving the load by
9 s; at 5,000, 94,951 items/s and 0.1 s, docs/benchmarks.md). The registrations now say 5,000; the default
schedules Squall created for ``sum`` and ``mul`` with 1,000 are raised too (a schedule's batch size set
through the API to exactly 1,000 on a default schedule cannot be told apart and is raised).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE schedules SET batch_size = 5000, updated_at = now() "
        "WHERE origin = 'default' AND name IN ('sum', 'mul') AND processing = name AND batch_size = 1000"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE schedules SET batch_size = 1000, updated_at = now() "
        "WHERE origin = 'default' AND name IN ('sum', 'mul') AND processing = name AND batch_size = 5000"
    )
