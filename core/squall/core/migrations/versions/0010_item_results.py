"""a request's done items of one processing are written as one row; one view shows every item

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 09:00:00

A done item was a row of ``items``: a request of 100 items recorded by an immediate processing wrote
100 rows (each with its primary-key index entry), the largest share of PostgreSQL's work in the P2
immediate benchmark. On a synthetic run (local PostgreSQL, one client, 2,000 requests of 100 done items
sent as one JSON document per 100 requests) inserting them took 3.5-4.1 us per item as rows and
0.5-0.6 us as one ``item_results`` row per request (arrays given as PostgreSQL array literals).

A request's items of one processing that are all done — computed when recorded (immediate processings) or
a chunk whose items were all done by one poll task — go into one ``item_results`` row (positions,
numbers and results as arrays); any other item (pending, failed, retried, leased) stays a row of
``items``. ``all_items`` shows every item, whichever table holds it: rows, the items of pending chunks
and the items of result rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL_ITEMS = """
CREATE VIEW all_items AS
SELECT request_task_id, position, number, job, state, result, error, attempts, claim_task_id, lease_until,
       not_before, created_at, updated_at
FROM items
UNION ALL
SELECT c.request_task_id, i.position, i.number, c.job, 'pending', NULL, NULL, 0, NULL, NULL, NULL,
       c.created_at, c.created_at
FROM item_chunks c CROSS JOIN LATERAL unnest(c.positions, c.numbers) AS i(position, number)
UNION ALL
SELECT r.request_task_id, i.position, i.number, r.job, 'done', i.result, NULL, 1, r.claim_task_id, NULL,
       NULL, r.created_at, r.updated_at
FROM item_results r
CROSS JOIN LATERAL ROWS FROM (unnest(r.positions), unnest(r.numbers), jsonb_array_elements(r.results))
     AS i(position, number, result)
"""


def upgrade() -> None:
    op.create_table(
        "item_results",
        sa.Column("request_task_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "part",
            sa.Integer(),
            nullable=False,
            comment="Unique among the request's chunks and result rows (a chunk done keeps its part).",
        ),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("positions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("numbers", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "claim_task_id",
            postgresql.UUID(as_uuid=True),
            comment="The poll task that computed them; NULL: computed when recorded.",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "item_count > 0 AND item_count = cardinality(positions) AND item_count = cardinality(numbers) "
            "AND item_count = jsonb_array_length(results)",
            name="item_results_counts",
        ),
        sa.PrimaryKeyConstraint("request_task_id", "part", name="item_results_pkey"),
    )
    op.execute(ALL_ITEMS)


def downgrade() -> None:
    # The result rows' items become done item rows again, as this schema's predecessor recorded them.
    op.execute(
        """
        INSERT INTO items (request_task_id, position, number, job, state, result, attempts, claim_task_id,
                           created_at, updated_at)
        SELECT r.request_task_id, i.position, i.number, r.job, 'done', i.result, 1, r.claim_task_id,
               r.created_at, r.updated_at
        FROM item_results r
        CROSS JOIN LATERAL ROWS FROM (unnest(r.positions), unnest(r.numbers), jsonb_array_elements(r.results))
             AS i(position, number, result)
        """
    )
    op.execute("DROP VIEW all_items")
    op.drop_table("item_results")
