"""request payloads and result rows up to a page long are stored as they are, not compressed

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 23:00:00

PostgreSQL compresses (pglz) the longest values of a row longer than about 2 KB until it fits. From about
80 items on, that was every request's payload at intake (its event, kept until a processor records it, for
the sweep to publish again: compressed only to be set NULL moments later) and every result row of an
immediate processing (the results as jsonb). In the P2 immediate benchmark pglz took 22 % of PostgreSQL's
CPU, about 50 us per request (``perf``, docs/benchmarks.md). With ``toast_tuple_target`` at its maximum,
rows up to a page (8 KB: a payload of about 300 items, a result row of about 300 results) are stored as
they are; longer ones are still compressed or moved out of line as before.

The price is space: a 100-item result row takes about 2.5 KB instead of 1.6, and the WAL carries payloads
uncompressed. Where the server has lz4 (``pg_config --configure`` shows ``--with-lz4``), an operator who
prefers the space may undo this for ``item_results`` and compress ``results`` with lz4, which costs a
fraction of pglz (docs/deploy.md).

A storage parameter: it takes a lock that lets reads and writes go on, and applies to rows written after.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("requests", "item_results")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (toast_tuple_target)")
