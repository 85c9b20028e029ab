"""items of lock-claimed batch processings wait for their first poll in chunks, written once

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 07:00:00

A batch item was inserted pending, locked by a poll task and updated with its outcome: two row versions,
each with its index entries, the pending one also in the partial queue index, then vacuumed. On a
synthetic queue of 200,000 items in requests of 100 (one client, local PostgreSQL, batches of 1,000)
recording and polling them took 2.62 s that way and 1.08 s with a request's items recorded as one chunk
row and inserted with their outcome when polled.

``take_item_chunks(job, limit, already)`` locks a job's oldest chunks one at a time (SKIP LOCKED) until
they hold ``limit`` items with the ``already`` taken (item rows taken before them), never more unless
nothing was taken and the first chunk alone holds more: a poll task's batch is counted in items,
which one statement with a plain LIMIT cannot do, and locking rows as a cursor reads them would lock
the first chunk that does not fit too.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "item_chunks",
        sa.Column("request_task_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "part", sa.Integer(), nullable=False, comment="The chunk's index among its request's chunks."
        ),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("positions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("numbers", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "item_count = cardinality(positions) AND item_count = cardinality(numbers) AND item_count > 0",
            name="item_chunks_counts",
        ),
        sa.PrimaryKeyConstraint("request_task_id", "part", name="item_chunks_pkey"),
    )
    op.create_index(
        "item_chunks_queue", "item_chunks", ["job", "created_at"], postgresql_include=["item_count"]
    )
    op.execute(
        """
        CREATE FUNCTION take_item_chunks(wanted_job text, item_limit integer, already_taken integer)
        RETURNS SETOF item_chunks LANGUAGE plpgsql AS $$
        DECLARE
            candidate record;
            chunk item_chunks;
            taken integer := already_taken;
        BEGIN
            FOR candidate IN
                SELECT request_task_id, part, item_count FROM item_chunks
                WHERE job = wanted_job ORDER BY created_at
            LOOP
                EXIT WHEN taken > 0 AND taken + candidate.item_count > item_limit;
                -- A new snapshot: a chunk another transaction took and deleted since is not found.
                SELECT * INTO chunk FROM item_chunks
                WHERE request_task_id = candidate.request_task_id AND part = candidate.part
                FOR UPDATE SKIP LOCKED;
                IF FOUND THEN
                    taken := taken + candidate.item_count;
                    RETURN NEXT chunk;
                    EXIT WHEN taken >= item_limit;
                END IF;
            END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    # The chunks' items become pending items again, as this schema's predecessor recorded them.
    op.execute(
        """
        INSERT INTO items (request_task_id, position, number, job, state, created_at)
        SELECT c.request_task_id, i.position, i.number, c.job, 'pending', c.created_at
        FROM item_chunks c CROSS JOIN LATERAL unnest(c.positions, c.numbers) AS i(position, number)
        """
    )
    op.execute("DROP FUNCTION take_item_chunks(text, integer, integer)")
    op.drop_table("item_chunks")
