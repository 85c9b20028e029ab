"""a tick may emit up to 64 poll tasks by default instead of 8

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 07:00:00

A tick emits one poll task per batch of claimable items, less the poll tasks still queued, at most
``max_batches_per_tick``. At 8 the schedule, not the processors, bounded how fast a backlog drained: 8
batches of 1,000 per 2 s tick is 4,000 items/s per processing, and the P2 batch benchmark (0.2 s ticks)
stopped at 40,000 items/s with its processor idle between ticks. Queued poll tasks are subtracted, so a
higher cap does not pile tasks up behind a busy processor.

The default schedules Squall created with the old default are raised too; a schedule whose cap was set
through the API keeps it (one set to exactly 8 on a default schedule cannot be told apart and is raised).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("schedules", "max_batches_per_tick", server_default="64")
    op.execute(
        "UPDATE schedules SET max_batches_per_tick = 64 WHERE origin = 'default' AND max_batches_per_tick = 8"
    )


def downgrade() -> None:
    op.alter_column("schedules", "max_batches_per_tick", server_default="8")
    op.execute(
        "UPDATE schedules SET max_batches_per_tick = 8 WHERE origin = 'default' AND max_batches_per_tick = 64"
    )
