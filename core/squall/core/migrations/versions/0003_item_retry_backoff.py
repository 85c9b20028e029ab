"""items.not_before: a retried item waits out its backoff

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "items",
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="A pending item retried after a failure waits until then.",
        ),
    )


def downgrade() -> None:
    op.drop_column("items", "not_before")
