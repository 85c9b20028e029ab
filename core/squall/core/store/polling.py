"""Poll tasks (processor): claim a processing's pending items (under a lease, or by row locks held for the
batch), write their results, and finish the task."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from squall.core.store.driver import embedded_json
from squall.core.store.item_rules import CLAIMABLE, Outcome


@dataclass
class Claimed:
    """A poll task's items, column by column (a batch holds thousands: no object per item): item rows and
    the items of chunks taken whole. They are computed, and their outcomes given, rows first."""

    rows: list[tuple[uuid.UUID, int]] = field(default_factory=list)  # (request, position)
    row_numbers: list[int] = field(default_factory=list)
    row_attempts: list[int] = field(default_factory=list)  # each row's attempt, the one about to run
    chunks: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)  # (request, part, item count)
    chunk_numbers: list[int] = field(default_factory=list)  # their first attempt

    def __len__(self) -> int:
        return len(self.row_numbers) + len(self.chunk_numbers)

    @property
    def numbers(self) -> list[int]:
        return self.row_numbers + self.chunk_numbers

    @property
    def attempts(self) -> list[int]:
        return self.row_attempts + [1] * len(self.chunk_numbers)

    def add_rows(self, rows: Iterable[Any]) -> None:
        for r in rows:
            self.rows.append((r.request_task_id, r.position))
            self.row_numbers.append(r.number)
            self.row_attempts.append(r.attempts)


_QUEUE_PLANS = text(
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_sort', 'off', true)"
)


async def plan_as_a_queue(conn: AsyncConnection) -> None:
    """For the rest of this transaction, plan on the queue's indexes (oldest claimable items in index order,
    items and requests by primary key) whatever the table statistics say.

    A table that grew from nothing in the last minute still has the statistics of an empty one until
    autovacuum analyzes it; the planner then reads every pending item and sorts them to claim a batch,
    and finds items by a sequential scan, several times slower under a deep backlog. Every statement of a
    poll task has an index made for it."""
    await conn.execute(_QUEUE_PLANS)


async def start_poll_task(
    conn: AsyncConnection, task_id: uuid.UUID, processing: str, batch_size: int
) -> bool:
    """Record the poll task as running; False if it already finished (a redelivery: do not run it again)."""
    row = (
        await conn.execute(
            text(
                """
                INSERT INTO tasks (id, kind, processing, batch_size, state, attempts, started_at)
                VALUES (:id, 'poll', :processing, :batch_size, 'running', 1, now())
                ON CONFLICT (id) DO UPDATE
                    SET state = 'running', attempts = tasks.attempts + 1, updated_at = now(),
                        started_at = coalesce(tasks.started_at, now())
                    WHERE tasks.state IN ('queued', 'running')
                RETURNING id
                """
            ),
            {"id": task_id, "processing": processing, "batch_size": batch_size},
        )
    ).first()
    return row is not None


# The items a poll task takes, oldest first: the claimable ones, and those still running under this very
# task (a redelivered task).
_TAKE_ITEMS = f"""
    SELECT {{columns}} FROM items
    WHERE job = :job AND ({CLAIMABLE} OR (state = 'running' AND claim_task_id = :task)) {{age}}
    ORDER BY created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
"""


# A lease is taken on item rows: the chunks of a processing that is not (or no longer) claimed by locks
# become pending items first.
_EXPAND_CHUNKS = text(
    """
    WITH taken AS (
        SELECT * FROM take_item_chunks(:job, :limit, 0)
    ), gone AS (
        DELETE FROM item_chunks c USING taken WHERE c.request_task_id = taken.request_task_id
                                                AND c.part = taken.part
    )
    INSERT INTO items (request_task_id, position, number, job, state, created_at)
    SELECT taken.request_task_id, i.position, i.number, taken.job, 'pending', taken.created_at
    FROM taken CROSS JOIN LATERAL unnest(taken.positions, taken.numbers) AS i(position, number)
    """
)


_CLAIM_LEASED = text(
    f"""
    UPDATE items SET state = 'running', attempts = items.attempts + 1, claim_task_id = :task,
                     lease_until = now() + make_interval(secs => :lease), updated_at = now()
    WHERE (request_task_id, position) IN ({_TAKE_ITEMS.format(columns="request_task_id, position", age="")})
    RETURNING request_task_id, position, number, attempts
    """
)


async def claim_items(
    conn: AsyncConnection, processing: str, task_id: uuid.UUID, limit: int, lease_seconds: float
) -> Claimed:
    """Claim up to ``limit`` items under a lease (marked running, committed by the caller): no two
    transactions can claim the same item (SKIP LOCKED)."""
    await conn.execute(_EXPAND_CHUNKS, {"job": processing, "limit": limit})
    rows = await conn.execute(
        _CLAIM_LEASED, {"task": task_id, "lease": lease_seconds, "job": processing, "limit": limit}
    )
    claimed = Claimed()
    claimed.add_rows(rows)
    return claimed


_OLDEST_CHUNK = text("SELECT min(created_at) FROM item_chunks WHERE job = :job")


_TAKE_CHUNKS = text("SELECT request_task_id, part, numbers FROM take_item_chunks(:job, :limit, :taken)")


# Item rows a locked batch takes: older than the oldest chunk (or younger), so neither kind starves.
_LOCK_ROWS = {
    older: text(
        _TAKE_ITEMS.format(
            columns="request_task_id, position, number, attempts + 1 AS attempts",
            age="AND (CAST(:oldest_chunk AS timestamptz) IS NULL OR created_at "
            + ("<= :oldest_chunk)" if older else "> :oldest_chunk)"),
        )
    )
    for older in (True, False)
}


async def lock_items(conn: AsyncConnection, processing: str, task_id: uuid.UUID, limit: int) -> Claimed:
    """Take up to ``limit`` items by row locks held until the caller's transaction ends: nothing is
    written until their outcomes are (``write_results(..., locked=True)``, same transaction). Their
    ``attempts`` is the attempt about to run. Oldest first: the item rows (small requests, retries) older
    than the oldest chunk, then whole chunks (never more than ``limit`` items, unless the first chunk
    alone holds more: a schedule's batch size below the processing's), then the younger rows."""
    oldest = (await conn.execute(_OLDEST_CHUNK, {"job": processing})).scalar()
    params = {"task": task_id, "job": processing, "oldest_chunk": oldest}
    claimed = Claimed()
    claimed.add_rows(await conn.execute(_LOCK_ROWS[True], {**params, "limit": limit}))
    if oldest is None or len(claimed) >= limit:
        return claimed
    chunks = await conn.execute(_TAKE_CHUNKS, {"job": processing, "limit": limit, "taken": len(claimed)})
    for c in chunks:
        claimed.chunks.append((c.request_task_id, c.part, len(c.numbers)))
        claimed.chunk_numbers.extend(c.numbers)
    if len(claimed) < limit:
        claimed.add_rows(await conn.execute(_LOCK_ROWS[False], {**params, "limit": limit - len(claimed)}))
    return claimed


# A poll task's outcomes, one JSON document (see NewItems.as_json): state, result, error, seconds before a
# retry, each item numbered (o) in the order the task took them.
_OUTCOMES = """
    doc AS (
        SELECT CAST(:outcomes AS jsonb) AS d
    ), outcome AS (
        SELECT o.o, o.s, CASE WHEN o.s = 'done' THEN o.r END AS r, o.e, CAST(o.d AS float8) AS d
        FROM doc, ROWS FROM (
            jsonb_array_elements_text(doc.d -> 's'), jsonb_array_elements(doc.d -> 'r'),
            jsonb_array_elements_text(doc.d -> 'e'), jsonb_array_elements_text(doc.d -> 'd')
        ) WITH ORDINALITY AS o(s, r, e, d, o)
    )"""


_COUNT_OUTCOMES = """
    counted AS (
        INSERT INTO stat_deltas (counter, processing, n)
        SELECT 'items_' || state, job, count(*) FROM written
        WHERE state IN ('done', 'failed') GROUP BY state, job
    )
    SELECT DISTINCT request_task_id FROM written"""


def _write_results_statement(owned: str, attempts: str) -> TextClause:
    """Item rows: the document also lists each one's request (t) and position (p)."""
    return text(
        f"""
    WITH {_OUTCOMES}, v AS (
        SELECT CAST(k.t AS uuid) AS t, CAST(k.p AS int) AS p, outcome.*
        FROM doc, ROWS FROM (
            jsonb_array_elements_text(doc.d -> 't'), jsonb_array_elements_text(doc.d -> 'p')
        ) WITH ORDINALITY AS k(t, p, o)
        JOIN outcome ON outcome.o = k.o
    ), written AS (
        UPDATE items SET state = v.s, result = v.r, error = v.e, lease_until = NULL,
                         not_before = now() + make_interval(secs => v.d), updated_at = now(),
                         attempts = {attempts}, claim_task_id = :task
        FROM v
        WHERE items.request_task_id = v.t AND items.position = v.p
          AND {owned}
        RETURNING items.request_task_id, items.job, items.state
    ), {_COUNT_OUTCOMES}
    """
    )


# Leased items are written only where this task still owns them; locked ones are owned by the transaction.
_WRITE_LEASED = _write_results_statement(
    "items.claim_task_id = :task AND items.state = 'running'", "items.attempts"
)


_WRITE_LOCKED = _write_results_statement("true", "items.attempts + 1")


# Chunks (locked by this transaction) some of whose items are not done: the document lists the chunks
# (request, part, item count) in the order their items were computed; the chunks go, and their items
# (outcome number: the items of the chunks before it, plus the item's place in its chunk) are inserted
# with their outcome, their first attempt made.
_WRITE_CHUNKED = text(
    f"""
    WITH {_OUTCOMES}, taken AS (
        SELECT CAST(c ->> 0 AS uuid) AS t, CAST(c ->> 1 AS int) AS k,
               sum(CAST(c ->> 2 AS int)) OVER (ORDER BY x.n) - CAST(c ->> 2 AS int) AS before
        FROM doc, jsonb_array_elements(doc.d -> 'c') WITH ORDINALITY AS x(c, n)
    ), gone AS (
        DELETE FROM item_chunks c USING taken
        WHERE c.request_task_id = taken.t AND c.part = taken.k
        RETURNING c.request_task_id, c.job, c.positions, c.numbers, c.created_at, taken.before
    ), written AS (
        INSERT INTO items (request_task_id, position, number, job, state, result, error, attempts,
                           claim_task_id, not_before, created_at)
        SELECT gone.request_task_id, i.position, i.number, gone.job, outcome.s, outcome.r, outcome.e, 1,
               :task, now() + make_interval(secs => outcome.d), gone.created_at
        FROM gone
        CROSS JOIN LATERAL unnest(gone.positions, gone.numbers) WITH ORDINALITY AS i(position, number, n)
        JOIN outcome ON outcome.o = gone.before + i.n
        RETURNING request_task_id, job, state
    ), {_COUNT_OUTCOMES}
    """
)


# Chunks whose items are all done: each becomes a result row (same part), its arrays moved as they are.
_FINISH_CHUNKS = text(
    """
    WITH taken AS (
        SELECT CAST(c ->> 0 AS uuid) AS t, CAST(c ->> 1 AS int) AS k, c -> 2 AS results
        FROM jsonb_array_elements(CAST(:chunks AS jsonb)) AS c
    ), gone AS (
        DELETE FROM item_chunks c USING taken
        WHERE c.request_task_id = taken.t AND c.part = taken.k
        RETURNING c.request_task_id, c.part, c.job, c.item_count, c.positions, c.numbers, c.created_at,
                  taken.results
    ), written AS (
        INSERT INTO item_results (request_task_id, part, job, item_count, positions, numbers, results,
                                  claim_task_id, created_at)
        SELECT request_task_id, part, job, item_count, positions, numbers, results, :task, created_at
        FROM gone
        RETURNING request_task_id, job, item_count
    ), counted AS (
        INSERT INTO stat_deltas (counter, processing, n)
        SELECT 'items_done', job, sum(item_count) FROM written GROUP BY job
    )
    SELECT DISTINCT request_task_id FROM written
    """
)


async def write_results(
    conn: AsyncConnection,
    task_id: uuid.UUID,
    claimed: Claimed,
    outcomes: Sequence[Outcome],
    locked: bool = False,
) -> set[uuid.UUID]:
    """Write the outcome of claimed items, only where this task still owns them: one effect per item
    (``locked``: taken by :func:`lock_items` in this transaction, which counts their attempt now); answers
    the requests of the items written. An item put back to pending waits its delay (seconds) before it may
    be claimed again. The outcomes go as one JSON document (see :meth:`NewItems.as_json`); a chunk whose
    items are all done becomes one result row."""
    touched: set[uuid.UUID] = set()
    rows = len(claimed.rows)
    if rows:
        statement = _WRITE_LOCKED if locked else _WRITE_LEASED
        columns: dict[str, list[Any]] = {"t": [t for t, _ in claimed.rows], "p": [p for _, p in claimed.rows]}
        touched |= await _write(conn, statement, task_id, columns, outcomes[:rows])
    finished: list[tuple[uuid.UUID, int, list[orjson.Fragment | None]]] = []
    unfinished: list[tuple[uuid.UUID, int, int]] = []
    unfinished_outcomes: list[Outcome] = []
    start = rows
    for chunk in claimed.chunks:
        own = outcomes[start : start + chunk[2]]
        start += chunk[2]
        if all(state == "done" for state, _, _, _ in own):
            finished.append((chunk[0], chunk[1], embedded_json(result for _, result, _, _ in own)))
        else:
            unfinished.append(chunk)
            unfinished_outcomes.extend(own)
    if finished:
        document = orjson.dumps(finished, default=str).decode()
        written = await conn.execute(_FINISH_CHUNKS, {"task": task_id, "chunks": document})
        touched.update(r.request_task_id for r in written)
    if unfinished:
        touched |= await _write(conn, _WRITE_CHUNKED, task_id, {"c": unfinished}, unfinished_outcomes)
    return touched


async def _write(
    conn: AsyncConnection,
    statement: TextClause,
    task_id: uuid.UUID,
    columns: dict[str, list[Any]],
    outcomes: Sequence[Outcome],
) -> set[uuid.UUID]:
    states, results, errors, delays = zip(*outcomes, strict=True) if outcomes else ((), (), (), ())
    document = orjson.dumps(
        {**columns, "s": states, "r": embedded_json(results), "e": errors, "d": delays},
        default=str,  # the driver's own UUID type (claimed rows' ids), which orjson does not know
    ).decode()
    rows = await conn.execute(statement, {"task": task_id, "outcomes": document})
    return {r.request_task_id for r in rows}


async def finish_poll_task(
    conn: AsyncConnection, task_id: uuid.UUID, state: str, items_processed: int, error: str | None
) -> None:
    await conn.execute(
        text(
            """
            UPDATE tasks SET state = :state, items_processed = :n, error = :error, updated_at = now(),
                             finished_at = now()
            WHERE id = :id
            """
        ),
        {"id": task_id, "state": state, "n": items_processed, "error": error},
    )
