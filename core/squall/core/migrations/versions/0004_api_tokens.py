"""api_tokens: bearer tokens with scopes, stored as SHA-256 digests

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column(
            "token_sha256", sa.Text, nullable=False, unique=True, comment="The token itself is never stored."
        ),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column(
            "rate_per_second", sa.Float, comment="Overrides the default rate limit; 0 means unlimited."
        ),
        sa.Column("burst", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'", name="api_tokens_name"),
        sa.CheckConstraint("token_sha256 ~ '^[0-9a-f]{64}$'", name="api_tokens_digest"),
        sa.CheckConstraint(
            "cardinality(scopes) >= 1 AND scopes <@ ARRAY['submit', 'read', 'admin']::text[]",
            name="api_tokens_scopes",
        ),
        sa.CheckConstraint("rate_per_second IS NULL OR rate_per_second >= 0", name="api_tokens_rate"),
        sa.CheckConstraint("burst IS NULL OR burst >= 1", name="api_tokens_burst"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
