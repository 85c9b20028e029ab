"""the database states which releases' code can run against it: the services check it at start

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 23:30:00

During a rolling upgrade the schema is migrated while the previous release still runs. Migrations are
expand/contract (docs/design.md): one that would break the previous release's code (a dropped or renamed
column, a constraint it violates) waits for a later release, and raises the oldest code revision recorded
here when it lands (``require_code_from``). Code that does not know the database's revision reads this
row to tell a compatible schema (a rolling upgrade under way) from one it must not run against.

No release before 0.1.0 (revision 0016) has this check; 0.1.0's code is the oldest that runs here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("single", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "oldest_code_revision",
            sa.Text(),
            nullable=False,
            comment="Code whose newest migration is older than this cannot run against this schema.",
        ),
        sa.CheckConstraint("single", name="schema_compatibility_single"),
        sa.CheckConstraint("oldest_code_revision ~ '^[0-9]{4}$'", name="schema_compatibility_revision"),
        sa.PrimaryKeyConstraint("single"),
    )
    op.execute("INSERT INTO schema_compatibility (oldest_code_revision) VALUES ('0016')")


def downgrade() -> None:
    op.drop_table("schema_compatibility")
