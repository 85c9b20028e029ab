"""requests accepted and their items are counted by triggers, so reading the backlog no longer scans requests

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 16:00:00

``GET /v1/stats`` and every gateway's admission control (about three reads a second in all) counted the
requests not recorded yet, and summed their items, over the partial index ``requests_awaiting_record``.
That index holds an entry for every request recorded since the last vacuum too, and until autovacuum first
analyzed a fast-growing table the planner scanned the whole of ``requests``: 11-12 ms per read at 47,000
requests in a 20 s benchmark run (docs/benchmarks.md), growing with the table.

Now two counters, ``requests_accepted`` and ``items_accepted``, are kept like the others (``stat_deltas``,
folded into ``stat_totals``) by statement-level triggers on ``requests``: an INSERT adds what it inserted, a
DELETE of requests not recorded yet (a withdrawn acceptance) takes them away. Requests not recorded yet are
then accepted - recorded, and their items accepted - recorded items: a read costs the same at any size.
Triggers rather than the gateway's statement: gateways of the previous release keep inserting during a
rolling upgrade, and their acceptances are counted all the same (they ignore counters they do not know).

Seeding: the triggers are created (which locks ``requests`` against writes until the migration commits)
and the rows already there are counted in the same transaction, so no acceptance is missed or counted
twice. Intake waits for that count: about a second per few million requests.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("requests_recorded", "requests_processed", "items_recorded", "items_done", "items_failed")
_AFTER = ("requests_accepted", "items_accepted", *_BEFORE)


def _allow_counters(counters: tuple[str, ...]) -> None:
    for table in ("stat_totals", "stat_deltas"):
        op.drop_constraint(f"{table}_counter", table, type_="check")
        op.create_check_constraint(f"{table}_counter", table, f"counter IN {counters}")


def upgrade() -> None:
    _allow_counters(_AFTER)
    op.execute(
        """
        CREATE FUNCTION squall_count_acceptances() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO stat_deltas (counter, processing, n)
                SELECT c.counter, '', c.n
                FROM (SELECT count(*) AS requests, sum(item_count) AS items FROM accepted) AS a
                CROSS JOIN LATERAL (VALUES ('requests_accepted', a.requests), ('items_accepted', a.items))
                     AS c(counter, n)
                WHERE a.requests > 0;
            ELSE
                -- Only a withdrawn acceptance is taken back: deleting a recorded request (a purge of
                -- history) leaves the counts of what happened, like the other counters.
                INSERT INTO stat_deltas (counter, processing, n)
                SELECT c.counter, '', -c.n
                FROM (SELECT count(*) AS requests, sum(item_count) AS items FROM withdrawn
                      WHERE recorded_at IS NULL) AS w
                CROSS JOIN LATERAL (VALUES ('requests_accepted', w.requests), ('items_accepted', w.items))
                     AS c(counter, n)
                WHERE w.requests > 0;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER requests_count_accepted AFTER INSERT ON requests
        REFERENCING NEW TABLE AS accepted FOR EACH STATEMENT EXECUTE FUNCTION squall_count_acceptances()
        """
    )
    op.execute(
        """
        CREATE TRIGGER requests_count_withdrawn AFTER DELETE ON requests
        REFERENCING OLD TABLE AS withdrawn FOR EACH STATEMENT EXECUTE FUNCTION squall_count_acceptances()
        """
    )
    op.execute(
        """
        INSERT INTO stat_totals (counter, processing, n)
        SELECT c.counter, '', c.n
        FROM (SELECT count(*) AS requests, coalesce(sum(item_count), 0) AS items FROM requests) AS a
        CROSS JOIN LATERAL (VALUES ('requests_accepted', a.requests), ('items_accepted', a.items))
             AS c(counter, n)
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER requests_count_withdrawn ON requests")
    op.execute("DROP TRIGGER requests_count_accepted ON requests")
    op.execute("DROP FUNCTION squall_count_acceptances()")
    op.execute("DELETE FROM stat_deltas WHERE counter IN ('requests_accepted', 'items_accepted')")
    op.execute("DELETE FROM stat_totals WHERE counter IN ('requests_accepted', 'items_accepted')")
    _allow_counters(_BEFORE)
