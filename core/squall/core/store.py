"""Every read and write of Squall's state in PostgreSQL, shared by the gateway and the processors.

Hot paths are SQLAlchemy Core ``text()`` statements with array parameters: one round trip per batch. The
two hottest (the intake INSERT, the recording) run on the pooled connection's asyncpg connection
(:func:`fetch_on_driver`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import math
import uuid
import weakref
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from squall.core.events import ItemFields, RequestSubmitted, read_request_submitted
from squall.core.settings import redact_url


def items_hash(items: Sequence[ItemFields]) -> bytes:
    """A digest of the items in order: equal digests mean an identical re-submission. (Stored: the text
    hashed must never change, or a re-submission of an older request would be taken for a conflict.)"""
    return hashlib.sha256("".join([f"{i['number']}\x1f{i['job']}\x1e" for i in items]).encode()).digest()


def result_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value)


def _embedded(results: Iterable[str | None]) -> list[orjson.Fragment | None]:
    """Results that are JSON text already, to embed as they are in a JSON document."""
    return [None if r is None else orjson.Fragment(r) for r in results]


_AUTOCOMMIT: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def statements(engine: AsyncEngine) -> AsyncConnection:
    """A connection whose statements each commit on their own: no BEGIN/COMMIT round trips around a
    statement that is atomic by itself (every read here, and the intake's single INSERT)."""
    autocommit = _AUTOCOMMIT.get(engine)
    if autocommit is None:  # made once per engine: building it took ~5 % of the gateway's CPU per request
        autocommit = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return autocommit.connect()


_DRIVER_DIALECT = asyncpg_dialect.dialect()


@functools.cache
def _on_driver(statement: TextClause) -> tuple[str, tuple[str, ...]]:
    """A ``text()`` statement as asyncpg takes it: ``$n`` placeholders, and the names they stand for."""
    compiled = statement.compile(dialect=_DRIVER_DIALECT)
    return compiled.string, tuple(compiled.positiontup or ())


async def fetch_on_driver(engine: AsyncEngine, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Run one of the hottest statements (the intake INSERT, the recording) on the pooled connection's
    asyncpg connection itself, autocommit: SQLAlchemy's execution around it (parameters, execution
    context, result, greenlet) cost the whole system 7 % of its CPU per one-item request and 2-3 % per
    100-item request (gateway 9 %, processor 18 % on one-item requests; docs/benchmarks.md). The
    pool, its bounds and its metrics stay SQLAlchemy's; asyncpg prepares the statement once per connection.
    A connection whose statement failed or was cancelled is invalidated: SQLAlchemy does that only for the
    errors it sees. asyncpg's own errors are raised (``http.is_unavailable`` knows them)."""
    sql, names = _on_driver(statement)
    # The pool's connection itself, not a Connection around it: 27 us of client CPU per checkout and
    # return against 67 (python -m bench.driver). Run in a greenlet: the pool waits on asyncio.
    pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        driver = pooled.driver_connection
        assert driver is not None
        return await driver.fetch(sql, *[params[name] for name in names])
    except BaseException as exc:
        await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)
        raise
    finally:
        await greenlet_spawn(pooled.close)


# --- intake (gateway) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    task_id: uuid.UUID
    created: bool  # False: an identical earlier submission
    recorded: bool
    payload: bytes | None  # the event to (re)publish while the request is not recorded yet


class RidConflict(Exception):
    """The rid was submitted before with other items."""


@dataclass(frozen=True)
class Submitted:
    task_id: uuid.UUID
    rid: str
    rid_is_int: bool
    items: Sequence[ItemFields]
    payload: bytes  # the RequestSubmitted event, as published

    @classmethod
    def of_event(cls, event: RequestSubmitted, rid_is_int: bool, payload: bytes) -> Submitted:
        items: list[ItemFields] = [{"number": i.number, "job": i.job} for i in event.items]
        return cls(event.task_id, event.rid, rid_is_int, items, payload)


_ACCEPT_MANY = text(
    """
    WITH r AS (
        INSERT INTO requests (rid, rid_is_int, task_id, items_hash, item_count, payload)
        SELECT * FROM unnest(CAST(:rid AS text[]), CAST(:rid_is_int AS bool[]),
                             CAST(:task_id AS uuid[]), CAST(:items_hash AS bytea[]),
                             CAST(:item_count AS int[]), CAST(:payload AS bytea[]))
        ON CONFLICT (rid) DO NOTHING
        RETURNING task_id, rid
    ), t AS (
        INSERT INTO tasks (id, kind, rid) SELECT task_id, 'request', rid FROM r
    )
    SELECT task_id FROM r
    """
)
_EXISTING = text(
    "SELECT task_id, items_hash, recorded_at IS NOT NULL AS recorded, payload FROM requests WHERE rid = :rid"
)


async def accept_requests(engine: AsyncEngine, batch: Sequence[Submitted]) -> list[Accepted | Exception]:
    """Record that the gateway accepted requests (before publishing them), in one statement for the whole
    batch (group commit); a request whose rid exists is answered by the earlier submission, or RidConflict.
    Each answer is in the order of ``batch``."""
    digests = [items_hash(s.items) for s in batch]
    # One statement inserts each request's two rows or neither.
    created = {row[0] for row in await fetch_on_driver(engine, _ACCEPT_MANY, _accept_params(batch, digests))}
    answers: list[Accepted | Exception] = []
    async with contextlib.AsyncExitStack() as stack:
        conn: AsyncConnection | None = None  # for the others, taken at the first of them
        for submitted, digest in zip(batch, digests, strict=True):
            if submitted.task_id in created:
                answers.append(
                    Accepted(submitted.task_id, created=True, recorded=False, payload=submitted.payload)
                )
                continue
            # The rid exists (or came twice in this batch): seldom, so one by one.
            if conn is None:
                conn = await stack.enter_async_context(statements(engine))
            answers.append(await _accept_existing(conn, submitted, digest))
    return answers


async def _accept_existing(
    conn: AsyncConnection, submitted: Submitted, digest: bytes
) -> Accepted | Exception:
    """The earlier submission of this rid; should it vanish in between (a withdrawn acceptance), accept this
    one after all."""
    for _ in range(3):
        existing = (await conn.execute(_EXISTING, {"rid": submitted.rid})).first()
        if existing is not None:
            if existing.items_hash != digest:
                return RidConflict(submitted.rid)
            return Accepted(
                existing.task_id, created=False, recorded=existing.recorded, payload=existing.payload
            )
        if (await conn.execute(_ACCEPT_MANY, _accept_params([submitted], [digest]))).first() is not None:
            return Accepted(submitted.task_id, created=True, recorded=False, payload=submitted.payload)
    return RuntimeError(f"rid {submitted.rid!r} keeps appearing and vanishing")


def _accept_params(batch: Sequence[Submitted], digests: Sequence[bytes]) -> dict[str, list[Any]]:
    return {
        "rid": [s.rid for s in batch],
        "rid_is_int": [s.rid_is_int for s in batch],
        "task_id": [s.task_id for s in batch],
        "items_hash": list(digests),
        "item_count": [len(s.items) for s in batch],
        "payload": [s.payload for s in batch],
    }


async def withdraw_request(engine: AsyncEngine, task_id: uuid.UUID) -> None:
    """Undo an acceptance whose event could not be published (the client is told 503 and may retry)."""
    async with engine.begin() as conn:
        deleted = await conn.execute(
            text("DELETE FROM requests WHERE task_id = :t AND recorded_at IS NULL RETURNING task_id"),
            {"t": task_id},
        )
        if deleted.first() is not None:
            await conn.execute(text("DELETE FROM tasks WHERE id = :t"), {"t": task_id})


# --- reads (gateway, CLI) ---------------------------------------------------------------------------------


_TASK_SELECT = """
    SELECT t.id, t.kind, t.state, t.attempts, t.created_at, t.updated_at, t.error, t.rid,
           t.processing, t.items_processed, r.rid_is_int
    FROM tasks t LEFT JOIN requests r ON r.task_id = t.id
"""


def _task(row: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_id": str(row.id),
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "error": row.error,
        "rid": present_rid(row.rid, bool(row.rid_is_int)) if row.rid is not None else None,
    }
    if row.kind == "poll":
        task["processing"] = row.processing
        task["items_processed"] = row.items_processed
    return task


async def get_task(engine: AsyncEngine, task_id: uuid.UUID) -> dict[str, Any] | None:
    async with statements(engine) as conn:
        row = (await conn.execute(text(_TASK_SELECT + " WHERE t.id = :id"), {"id": task_id})).first()
    return _task(row) if row is not None else None


async def list_tasks(
    engine: AsyncEngine,
    state: str | None,
    kind: str | None,
    processing: str | None,
    limit: int,
    after: tuple[dt.datetime, uuid.UUID] | None,
) -> tuple[list[dict[str, Any]], tuple[dt.datetime, uuid.UUID] | None]:
    """Tasks, newest first, filtered; and the cursor of the next page (None on the last)."""
    conditions = [
        "(CAST(:state AS text) IS NULL OR t.state = :state)",
        "(CAST(:kind AS text) IS NULL OR t.kind = :kind)",
        "(CAST(:processing AS text) IS NULL OR t.processing = :processing)",
    ]
    if after is not None:
        conditions.append("(t.created_at, t.id) < (:after_at, :after_id)")
    query = (
        _TASK_SELECT
        + " WHERE "
        + " AND ".join(conditions)
        + " ORDER BY t.created_at DESC, t.id DESC LIMIT :n"
    )
    params: dict[str, Any] = {"state": state, "kind": kind, "processing": processing, "n": limit + 1}
    if after is not None:
        params.update(after_at=after[0], after_id=after[1])
    async with statements(engine) as conn:
        rows = (await conn.execute(text(query), params)).all()
    following = (rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return [_task(r) for r in rows[:limit]], following


async def get_request(engine: AsyncEngine, rid: str) -> dict[str, Any] | None:
    async with statements(engine) as conn:
        head = (
            await conn.execute(
                text(
                    """
                    SELECT r.rid, r.rid_is_int, r.task_id, r.processed, r.recorded_at, r.item_count,
                           r.payload, t.state
                    FROM requests r JOIN tasks t ON t.id = r.task_id WHERE r.rid = :rid
                    """
                ),
                {"rid": rid},
            )
        ).first()
        if head is None:
            return None
        rows = (
            await conn.execute(
                text(
                    """
                    SELECT position, number, job, state, result, error FROM all_items
                    WHERE request_task_id = :t ORDER BY position
                    """
                ),
                {"t": head.task_id},
            )
        ).all()
    if head.recorded_at is None:
        # Accepted, not yet recorded by a processor: every item is pending.
        accepted = read_request_submitted(head.payload)
        items = [
            {"number": number, "job": job, "state": "pending", "result": None, "error": None}
            for number, job in zip(accepted.numbers, accepted.jobs, strict=True)
        ]
    else:
        items = [
            {"number": r.number, "job": r.job, "state": r.state, "result": r.result, "error": r.error}
            for r in rows
        ]
    counts = {"pending": 0, "done": 0, "failed": 0}
    for item in items:
        state = str(item["state"])
        counts["pending" if state in ("pending", "running") else state] += 1
    return {
        "rid": present_rid(head.rid, head.rid_is_int),
        "task_id": str(head.task_id),
        "recorded": head.recorded_at is not None,
        "processed": head.processed,
        "counts": counts,
        "items": items,
    }


async def rid_of_task(engine: AsyncEngine, task_id: uuid.UUID) -> str | None:
    async with statements(engine) as conn:
        return (
            await conn.execute(text("SELECT rid FROM requests WHERE task_id = :t"), {"t": task_id})
        ).scalar()


def present_rid(rid: str, rid_is_int: bool) -> int | str:
    return int(rid) if rid_is_int else rid


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- counts: GET /v1/stats and the state gauges ------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    accepted: int  # every request the gateway accepted (recorded by a processor or not)
    recorded: int
    processed: int
    items: dict[str, dict[str, int]]  # processing → {"pending", "done", "failed"} (recorded items)
    dead_tasks: dict[str, int]  # processing → dead poll tasks
    unrecorded_items: int = 0  # items of the requests accepted but not recorded yet

    @property
    def backlog_items(self) -> int:
        """Items accepted and not processed yet: in requests not recorded, or recorded and pending."""
        return self.unrecorded_items + sum(counts["pending"] for counts in self.items.values())


_READ_STATS = text(
    """
    SELECT counter, processing, CAST(sum(n) AS bigint) AS n FROM (
        SELECT counter, processing, n FROM stat_totals
        UNION ALL SELECT counter, processing, n FROM stat_deltas
        -- A dead request task (its immediate items failed at recording) counts under its items' processing.
        UNION ALL SELECT 'tasks_dead', coalesce(t.processing, (SELECT i.job FROM items i
                                                              WHERE i.request_task_id = t.id
                                                              ORDER BY i.position LIMIT 1), ''), count(*)
                  FROM tasks t WHERE t.state = 'dead' GROUP BY 2
    ) AS c
    GROUP BY counter, processing
    """
)


async def read_stats(engine: AsyncEngine) -> Stats:
    """Request and item counts in one statement whose cost does not grow with the history or the backlog:
    folded counters, the deltas not folded yet, and dead tasks (a partial index as small as the dead-letter
    list). Requests not recorded yet are the accepted ones (counted by triggers, migration 0011) less the
    recorded ones, and so are their items."""
    async with statements(engine) as conn:
        rows = (await conn.execute(_READ_STATS)).all()
    counts: dict[tuple[str, str], int] = {(r.counter, r.processing): int(r.n) for r in rows}
    recorded = counts.get(("requests_recorded", ""), 0)
    items: dict[str, dict[str, int]] = {}
    for (counter, processing), _ in sorted(counts.items()):
        if counter == "items_recorded":
            done = counts.get(("items_done", processing), 0)
            failed = counts.get(("items_failed", processing), 0)
            items[processing] = {
                "pending": counts[(counter, processing)] - done - failed,
                "done": done,
                "failed": failed,
            }
    items_recorded = sum(n for (counter, _), n in counts.items() if counter == "items_recorded")
    return Stats(
        accepted=counts.get(("requests_accepted", ""), 0),
        recorded=recorded,
        processed=counts.get(("requests_processed", ""), 0),
        items=items,
        dead_tasks={p: n for (c, p), n in sorted(counts.items()) if c == "tasks_dead"},
        unrecorded_items=counts.get(("items_accepted", ""), 0) - items_recorded,
    )


# Any constant distinct from the migration lock's: only one process folds at a time.
_FOLD_LOCK = 0x5351_5354_4154


async def fold_stat_deltas(engine: AsyncEngine) -> int | None:
    """Move the appended count changes into the totals (keeps read_stats cheap); answers how many delta
    rows were folded, or None when another process is folding right now."""
    async with engine.begin() as conn:
        if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK})).scalar():
            return None
        moved = await conn.execute(
            text(
                """
                WITH moved AS (
                    DELETE FROM stat_deltas RETURNING counter, processing, n
                ), folded AS (
                    INSERT INTO stat_totals (counter, processing, n)
                    SELECT counter, processing, sum(n) FROM moved GROUP BY counter, processing
                    ON CONFLICT (counter, processing) DO UPDATE SET n = stat_totals.n + excluded.n
                )
                SELECT count(*) FROM moved
                """
            )
        )
        return int(moved.scalar_one())


# --- recording requests (processor) -----------------------------------------------------------------------


Outcome = tuple[str, str | None, str | None, float | None]
"""An item's (state: pending, done or failed; result as JSON text; error; seconds before it may be retried:
an immediate item that failed retryably waits this long, its first attempt made)."""


PENDING: Outcome = ("pending", None, None, None)  # a batch processing's item, left to its poll tasks
# A request's items of one processing are recorded as a chunk (pending) or a result row (done) from this
# many on: below it, a chunk row (and taking it alone) costs more than the item rows (P1 batch benchmark,
# one-item chunks: PostgreSQL CPU per request 222-260 us against 181-202 as rows, docs/benchmarks.md).
CHUNK_MIN_ITEMS = 8


def pg_array(values: Sequence[int]) -> str:
    """Integers as a PostgreSQL array literal: cast in SQL, it costs a fraction of unpacking a JSON array
    element by element (migration 0010)."""
    if isinstance(values, range):
        if values.start == 0 and values.step == 1:
            return _counting(values.stop)  # a whole request's positions
        values = list(values)
    return "{" + orjson.dumps(values).decode()[1:-1] + "}"


@functools.lru_cache(maxsize=64)
def _counting(count: int) -> str:
    return "{" + ",".join(map(str, range(count))) + "}"


def results_array(values: Sequence[Any]) -> orjson.Fragment | None:
    """Results as one JSON array, encoded at once; None when some value is not plain JSON to orjson (an
    integer beyond 64 bits), for :func:`result_json` to encode one by one."""
    try:
        return orjson.Fragment(orjson.dumps(values))
    except TypeError:
        return None


@dataclass
class NewItems:
    """Items to insert, column by column: a batch holds thousands, so no object per item. Where a request
    has at least ``CHUNK_MIN_ITEMS`` items of one processing, the pending ones of a processing in
    ``chunk_sizes`` (processing → most items per chunk) are recorded as chunks (``item_chunks``, see
    :func:`lock_items`), and the done ones (immediate processings) as one result row (``item_results``)."""

    chunk_sizes: Mapping[str, int] = field(default_factory=dict)
    request_task_id: list[uuid.UUID] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    number: list[int] = field(default_factory=list)
    job: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    result: list[str | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    retry_in: list[float | None] = field(default_factory=list)
    # (request, part, processing, positions, numbers[, results as one JSON array]); parts are unique per
    # request.
    chunks: list[tuple[uuid.UUID, int, str, list[int], list[int]]] = field(default_factory=list)
    done: list[tuple[uuid.UUID, int, str, Sequence[int], list[int], orjson.Fragment]] = field(
        default_factory=list
    )

    def as_json(self) -> str:
        """The columns as one JSON document: the driver encodes one string instead of checking the type of
        every element of eight arrays (which took half the processor's time recording 100-item requests)."""
        columns = {
            "t": self.request_task_id,
            "p": self.position,
            "n": self.number,
            "j": self.job,
            "s": self.state,
            "r": _embedded(self.result),
            "e": self.error,
            "d": self.retry_in,
            "chunks": [(t, part, job, pg_array(p), pg_array(n)) for t, part, job, p, n in self.chunks],
            "done": [(t, part, job, pg_array(p), pg_array(n), r) for t, part, job, p, n, r in self.done],
        }
        return orjson.dumps(columns).decode()

    def add(
        self,
        request_task_id: uuid.UUID,
        numbers: Sequence[int],
        jobs: Sequence[str],
        outcomes: Sequence[Outcome],
    ) -> None:
        """A request's items (numbers and jobs) with their outcomes, in order: as chunks, result rows or item
        rows."""
        rows: Sequence[int] = range(len(numbers))
        chunked, done = self._grouped(jobs, outcomes)
        if chunked or done:
            part = 0
            for job, positions in chunked.items():
                size = self.chunk_sizes[job]
                for start in range(0, len(positions), size):
                    taken = positions[start : start + size]
                    self.chunks.append((request_task_id, part, job, taken, [numbers[p] for p in taken]))
                    part += 1
            for job, positions in done.items():
                texts = [cast(str, outcomes[p][1]) for p in positions]
                computed = orjson.Fragment("[" + ",".join(texts) + "]")
                self.done.append(
                    (request_task_id, part, job, positions, [numbers[p] for p in positions], computed)
                )
                part += 1
            grouped = {p for groups in (chunked, done) for positions in groups.values() for p in positions}
            rows = [p for p in rows if p not in grouped] if len(grouped) < len(rows) else []
        if not rows:
            return
        self.request_task_id.extend([request_task_id] * len(rows))
        self.position.extend(rows)
        self.number.extend([numbers[p] for p in rows])
        self.job.extend([jobs[p] for p in rows])
        states, results, errors, delays = zip(*(outcomes[p] for p in rows), strict=True)
        self.state.extend(states)
        self.result.extend(results)
        self.error.extend(errors)
        self.retry_in.extend(delays)

    def add_done(
        self, request_task_id: uuid.UUID, job: str, numbers: list[int], results: orjson.Fragment
    ) -> None:
        """A request all of whose items (at least ``CHUNK_MIN_ITEMS``, of one processing) are done, with
        ``results`` as one JSON array (:func:`results_array`): one result row, built without looking at
        each item (what :meth:`add` makes of the same request)."""
        self.done.append((request_task_id, 0, job, range(len(numbers)), numbers, results))

    def _grouped(
        self, jobs: Sequence[str], outcomes: Sequence[Outcome]
    ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The positions of the items to record as chunks and as result rows, by processing: a chunked
        processing's pending items, and any processing's done ones, where the request has at least
        CHUNK_MIN_ITEMS of them."""
        count = len(jobs)
        if count < CHUNK_MIN_ITEMS:
            return {}, {}
        if jobs.count(jobs[0]) == count:  # one processing (the usual request): whole, or item by item
            job = jobs[0]
            if outcomes.count(PENDING) == count:
                return ({job: list(range(count))} if job in self.chunk_sizes else {}), {}
            if all(outcome[0] == "done" for outcome in outcomes):
                return {}, {job: list(range(count))}
        waiting: dict[str, list[int]] = {}
        done: dict[str, list[int]] = {}
        for position, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
            if outcome == PENDING:
                if job in self.chunk_sizes:
                    waiting.setdefault(job, []).append(position)
            elif outcome[0] == "done":
                done.setdefault(job, []).append(position)
        return _at_least(waiting), _at_least(done)

    def pending_requests(self) -> set[uuid.UUID]:
        """The requests some of whose items are left pending (the others are complete once recorded)."""
        pending = {t for t, state in zip(self.request_task_id, self.state, strict=True) if state == "pending"}
        pending.update(chunk[0] for chunk in self.chunks)
        return pending

    def outcomes(self, of: Container[uuid.UUID] | None = None) -> Counter[tuple[str, str]]:
        """How many items by (processing, state), of every request or only of those in ``of``."""
        counts: Counter[tuple[str, str]] = Counter()
        if of is None:
            counts.update(zip(self.job, self.state, strict=True))
        else:
            counts.update(
                (job, state)
                for t, job, state in zip(self.request_task_id, self.job, self.state, strict=True)
                if t in of
            )
        for t, _, job, positions, _ in self.chunks:
            if of is None or t in of:
                counts[job, "pending"] += len(positions)
        for t, _, job, done_positions, _, _ in self.done:
            if of is None or t in of:
                counts[job, "done"] += len(done_positions)
        return counts


def _at_least(groups: dict[str, list[int]]) -> dict[str, list[int]]:
    return {job: positions for job, positions in groups.items() if len(positions) >= CHUNK_MIN_ITEMS}


@dataclass(frozen=True)
class RecordedRequest:
    task_id: uuid.UUID
    processed: bool  # every item already done or failed (immediate processings): the request is complete
    seconds: float  # since the gateway accepted it


# The statement that records requests, in parts: each batch's statement has only the parts its items need
# (item rows, chunks, result rows). Planned per execution (the main pool, design.md), the parts a batch
# does not use took a third of the planning (`python -m bench.planning`); on the hot statements' pool each
# shape is planned once per connection, and the unused parts would still be started for every execution.
_RECORD_CLAIMED = """
    claimed AS (
        UPDATE requests r SET recorded_at = now(), payload = NULL,
                              processed = v.complete, processed_at = CASE WHEN v.complete THEN now() END
        FROM unnest(CAST(:ids AS uuid[]), CAST(:complete AS bool[]), CAST(:errors AS text[]))
             AS v(id, complete, error)
        WHERE r.task_id = v.id AND r.recorded_at IS NULL
        RETURNING r.task_id, v.complete, v.error,
                  extract(epoch FROM clock_timestamp() - r.created_at) AS seconds
    ), finished AS (
        UPDATE tasks SET state = CASE WHEN c.error IS NULL THEN 'succeeded' ELSE 'dead' END, error = c.error,
                         attempts = attempts + 1, updated_at = now(),
                         started_at = coalesce(started_at, now()), finished_at = now()
        FROM claimed c WHERE tasks.id = c.task_id
    )"""
_RECORD_DOC = """
    doc AS (
        SELECT CAST(:items AS jsonb) AS d
    )"""
_RECORD_ROWS = """
    new AS (
        SELECT CAST(v.t AS uuid) AS t, CAST(v.p AS int) AS p, CAST(v.n AS bigint) AS n, v.j, v.s,
               CASE WHEN v.s = 'done' THEN v.r END AS r, v.e, CAST(v.d AS float8) AS d
        FROM doc, ROWS FROM (
            jsonb_array_elements_text(doc.d -> 't'), jsonb_array_elements_text(doc.d -> 'p'),
            jsonb_array_elements_text(doc.d -> 'n'), jsonb_array_elements_text(doc.d -> 'j'),
            jsonb_array_elements_text(doc.d -> 's'), jsonb_array_elements(doc.d -> 'r'),
            jsonb_array_elements_text(doc.d -> 'e'), jsonb_array_elements_text(doc.d -> 'd')
        ) AS v(t, p, n, j, s, r, e, d)
        JOIN claimed ON claimed.task_id = CAST(v.t AS uuid)
    ), inserted AS (
        INSERT INTO items (request_task_id, position, number, job, state, result, error, attempts, not_before)
        SELECT t, p, n, j, s, r, e, CASE WHEN s = 'pending' AND e IS NULL THEN 0 ELSE 1 END,
               now() + make_interval(secs => d)
        FROM new
    )"""
_RECORD_CHUNKS = """
    chunked AS (
        INSERT INTO item_chunks (request_task_id, part, job, item_count, positions, numbers)
        SELECT claimed.task_id, CAST(c ->> 1 AS int), c ->> 2, cardinality(CAST(c ->> 3 AS int[])),
               CAST(c ->> 3 AS int[]), CAST(c ->> 4 AS bigint[])
        FROM doc, jsonb_array_elements(doc.d -> 'chunks') AS c
        JOIN claimed ON claimed.task_id = CAST(c ->> 0 AS uuid)
        RETURNING job, item_count
    )"""
_RECORD_DONE = """
    done AS (
        INSERT INTO item_results (request_task_id, part, job, item_count, positions, numbers, results)
        SELECT claimed.task_id, CAST(c ->> 1 AS int), c ->> 2, jsonb_array_length(c -> 5),
               CAST(c ->> 3 AS int[]), CAST(c ->> 4 AS bigint[]), c -> 5
        FROM doc, jsonb_array_elements(doc.d -> 'done') AS c
        JOIN claimed ON claimed.task_id = CAST(c ->> 0 AS uuid)
        RETURNING job, item_count
    )"""
_COUNT_REQUESTS = """
        SELECT 'requests_recorded', '', count(*) FROM claimed HAVING count(*) > 0
        UNION ALL
        SELECT 'requests_processed', '', count(*) FILTER (WHERE complete) FROM claimed
        HAVING count(*) FILTER (WHERE complete) > 0"""
_COUNT_ROWS = """
        SELECT c.counter, new.j, count(*)
        FROM new CROSS JOIN LATERAL (
            VALUES ('items_recorded'), (CASE WHEN new.s IN ('done', 'failed') THEN 'items_' || new.s END)
        ) AS c(counter)
        WHERE c.counter IS NOT NULL
        GROUP BY c.counter, new.j"""
_COUNT_CHUNKS = """
        SELECT 'items_recorded', job, sum(item_count) FROM chunked GROUP BY job"""
_COUNT_DONE = """
        SELECT c.counter, done.job, sum(done.item_count)
        FROM done CROSS JOIN (VALUES ('items_recorded'), ('items_done')) AS c(counter)
        GROUP BY c.counter, done.job"""


@functools.cache
def record_statement(rows: bool, chunks: bool, done: bool) -> TextClause:
    """Recording of a batch with item rows, chunks and result rows (or not): mark the requests recorded
    (processed if complete), finish their tasks, insert their items, count all of it."""
    parts = [_RECORD_CLAIMED]
    counts = [_COUNT_REQUESTS]
    if rows or chunks or done:
        parts.append(_RECORD_DOC)
    for present, part, count in (
        (rows, _RECORD_ROWS, _COUNT_ROWS),
        (chunks, _RECORD_CHUNKS, _COUNT_CHUNKS),
        (done, _RECORD_DONE, _COUNT_DONE),
    ):
        if present:
            parts.append(part)
            counts.append(count)
    counted = "\n    counted AS (\n        INSERT INTO stat_deltas (counter, processing, n)"
    counted += "\n        UNION ALL".join(counts) + "\n    )"
    return text("WITH" + ",".join([*parts, counted]) + "\nSELECT task_id, complete, seconds FROM claimed")


async def record_requests(
    engine: AsyncEngine, task_ids: Sequence[uuid.UUID], items: NewItems, dead: dict[uuid.UUID, str]
) -> list[RecordedRequest]:
    """Record requests, each once, in one statement (atomic by itself, one round trip): mark them recorded,
    insert their items, finish their request tasks (succeeded, or dead with the error in ``dead``), and
    mark processed the ones none of whose items is pending. ``task_ids`` are distinct; ``items`` holds
    all their items. Answers the requests recorded now (the others were recorded before: redeliveries)."""
    ids = list(task_ids)
    pending = items.pending_requests()
    rows = await fetch_on_driver(
        engine,
        record_statement(bool(items.request_task_id), bool(items.chunks), bool(items.done)),
        {
            "ids": ids,
            "complete": [i not in pending for i in ids],
            "errors": [dead.get(i) for i in ids],
            "items": items.as_json(),
        },
    )
    return [RecordedRequest(r["task_id"], r["complete"], float(r["seconds"])) for r in rows]


async def mark_processed(
    conn: AsyncConnection, request_task_ids: Iterable[uuid.UUID]
) -> list[tuple[uuid.UUID, float]]:
    """Mark requests processed once none of their items is pending or running; answers (task id, seconds
    since the gateway accepted it) of each request this call marked.

    The rows are locked first, in a fixed order, and checked in a second statement: that statement's
    snapshot then sees the items of every transaction that locked the row before, so two processors
    finishing a request's last items at once cannot both miss that it is complete.
    """
    ids = sorted(set(request_task_ids))
    if not ids:
        return []
    await conn.execute(
        text(
            "SELECT 1 FROM requests WHERE task_id = ANY(CAST(:ids AS uuid[])) AND NOT processed "
            "ORDER BY task_id FOR UPDATE"
        ),
        {"ids": ids},
    )
    result = await conn.execute(
        text(
            """
            WITH done AS (
                UPDATE requests r SET processed = true, processed_at = now()
                WHERE r.task_id = ANY(CAST(:ids AS uuid[])) AND NOT r.processed AND r.recorded_at IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM items i WHERE i.request_task_id = r.task_id
                                  AND i.state IN ('pending', 'running'))
                  AND NOT EXISTS (SELECT 1 FROM item_chunks c WHERE c.request_task_id = r.task_id)
                RETURNING r.task_id, extract(epoch FROM clock_timestamp() - r.created_at) AS seconds
            ), counted AS (
                INSERT INTO stat_deltas (counter, processing, n)
                SELECT 'requests_processed', '', count(*) FROM done HAVING count(*) > 0
            )
            SELECT task_id, seconds FROM done
            """
        ),
        {"ids": ids},
    )
    return [(r.task_id, float(r.seconds)) for r in result]


async def unrecorded_payloads(
    engine: AsyncEngine, older_than_seconds: float, limit: int
) -> list[tuple[str, uuid.UUID, bytes]]:
    async with statements(engine) as conn:
        rows = await conn.execute(
            text(
                """
                SELECT rid, task_id, payload FROM requests
                WHERE payload IS NOT NULL AND created_at < now() - make_interval(secs => :age)
                ORDER BY created_at LIMIT :limit
                """
            ),
            {"age": older_than_seconds, "limit": limit},
        )
        return [(r.rid, r.task_id, r.payload) for r in rows]


# --- polling tasks (processor) ----------------------------------------------------------------------------


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
    and finds items by a sequential scan: measured 120 ms instead of 27 ms per 1,000 items claimed and
    written with 200,000 pending. Every statement of a poll task has an index made for it."""
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


# Items anyone may claim: pending ones past their retry delay, and running ones whose lease expired (their
# processor died).
_CLAIMABLE = (
    "(state = 'pending' AND (not_before IS NULL OR not_before <= now())) "
    "OR (state = 'running' AND lease_until < now())"
)
# The items a poll task takes, oldest first: the claimable ones, and those still running under this very
# task (a redelivered task).
_TAKE_ITEMS = f"""
    SELECT {{columns}} FROM items
    WHERE job = :job AND ({_CLAIMABLE} OR (state = 'running' AND claim_task_id = :task)) {{age}}
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
            finished.append((chunk[0], chunk[1], _embedded(result for _, result, _, _ in own)))
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
        {**columns, "s": states, "r": _embedded(results), "e": errors, "d": delays},
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


async def replay_task(conn: AsyncConnection, task_id: uuid.UUID) -> tuple[str, Any]:
    """Make a dead task run again: its failed items pending with fresh attempts (and their requests no
    longer processed). A poll task goes back to queued (the caller publishes it again); a request task's
    items — failed at recording, never claimed — are left to their processing's schedule, and the task,
    whose work (recording) is done, is succeeded again.

    Answers ("replayed", row), ("not_dead", row) or ("missing", None). Only a dead task is replayed, so
    two replays of one task run it once."""
    row = (
        await conn.execute(
            text("SELECT id, kind, state, processing, batch_size FROM tasks WHERE id = :id FOR UPDATE"),
            {"id": task_id},
        )
    ).first()
    if row is None:
        return "missing", None
    if row.state != "dead":
        return "not_dead", row
    await conn.execute(
        text(
            "UPDATE tasks SET state = CASE WHEN kind = 'request' THEN 'succeeded' ELSE 'queued' END, "
            "error = NULL, updated_at = now(), finished_at = NULL WHERE id = :id"
        ),
        {"id": task_id},
    )
    await conn.execute(
        text(
            """
            WITH reset AS (
                UPDATE items SET state = 'pending', attempts = 0, error = NULL, not_before = NULL,
                                 updated_at = now()
                WHERE state = 'failed'
                  AND (claim_task_id = :id OR (request_task_id = :id AND claim_task_id IS NULL))
                RETURNING request_task_id, job
            ), reopened AS (
                UPDATE requests SET processed = false, processed_at = NULL
                WHERE task_id IN (SELECT request_task_id FROM reset) AND processed
                RETURNING task_id
            )
            INSERT INTO stat_deltas (counter, processing, n)
            SELECT 'items_failed', job, -count(*) FROM reset GROUP BY job
            UNION ALL
            SELECT 'requests_processed', '', -count(*) FROM reopened HAVING count(*) > 0
            """
        ),
        {"id": task_id},
    )
    return "replayed", row


# --- scheduler: leadership, instances, schedules, ticks -------------------------------------------------


async def renew_leadership(engine: AsyncEngine, me: str, ttl_seconds: float) -> int | None:
    """Take or keep the leadership lease; the epoch while this instance leads, None otherwise.

    The epoch changes whenever the lease changes hands (or lapses and is taken again): it fences a leader
    that paused past its lease out of every tick it might still try to fire."""
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(
                    """
                    UPDATE scheduler_leader SET
                        epoch = CASE WHEN holder = :me AND expires_at > now() THEN epoch ELSE epoch + 1 END,
                        acquired_at = CASE WHEN holder = :me AND expires_at > now() THEN acquired_at
                                           ELSE now() END,
                        holder = :me,
                        expires_at = now() + make_interval(secs => :ttl)
                    WHERE id = 1 AND (holder = :me OR holder IS NULL OR expires_at <= now())
                    RETURNING epoch
                    """
                ),
                {"me": me, "ttl": ttl_seconds},
            )
        ).first()
    return int(row.epoch) if row is not None else None


async def resign_leadership(engine: AsyncEngine, me: str) -> None:
    async with statements(engine) as conn:
        await conn.execute(
            text("UPDATE scheduler_leader SET expires_at = now() WHERE id = 1 AND holder = :me"), {"me": me}
        )


async def heartbeat_instance(engine: AsyncEngine, me: str, host: str, started_at: dt.datetime) -> None:
    async with statements(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO scheduler_instances (id, host, started_at, last_seen)
                VALUES (:id, :host, :started, now())
                ON CONFLICT (id) DO UPDATE SET last_seen = now()
                """
            ),
            {"id": me, "host": host, "started": started_at},
        )


async def leave_instances(engine: AsyncEngine, me: str) -> None:
    async with statements(engine) as conn:
        await conn.execute(text("DELETE FROM scheduler_instances WHERE id = :id"), {"id": me})


async def schedulers_view(engine: AsyncEngine, seen_within_seconds: float = 30.0) -> dict[str, Any]:
    async with statements(engine) as conn:
        leader = (
            await conn.execute(
                text("SELECT holder FROM scheduler_leader WHERE id = 1 AND expires_at > now()")
            )
        ).scalar()
        rows = await conn.execute(
            text(
                """
                SELECT id, host, started_at, last_seen FROM scheduler_instances
                WHERE last_seen > now() - make_interval(secs => :within) ORDER BY started_at, id
                """
            ),
            {"within": seen_within_seconds},
        )
        instances = [
            {"id": r.id, "host": r.host, "started_at": _iso(r.started_at), "last_seen": _iso(r.last_seen)}
            for r in rows
        ]
    return {"leader": leader, "instances": instances}


async def prune(engine: AsyncEngine, keep_ticks_days: float, forget_instances_seconds: float) -> None:
    async with statements(engine) as conn:
        await conn.execute(
            text("DELETE FROM schedule_ticks WHERE emitted_at < now() - make_interval(days => :d)"),
            {"d": int(keep_ticks_days)},
        )
        await conn.execute(
            text("DELETE FROM scheduler_instances WHERE last_seen < now() - make_interval(secs => :s)"),
            {"s": forget_instances_seconds},
        )


async def ensure_default_schedule(
    engine: AsyncEngine, processing: str, interval_seconds: float, batch_size: int
) -> None:
    """Every processing gets a schedule named after it, unless one exists already: a batch processing's
    polls its items; an immediate processing's picks up the items waiting for a retry."""
    async with statements(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO schedules (name, processing, interval_seconds, batch_size, next_due_at, origin)
                VALUES (:name, :name, :interval, :batch, now() + make_interval(secs => :interval), 'default')
                ON CONFLICT (name) DO NOTHING
                """
            ),
            {"name": processing, "interval": interval_seconds, "batch": batch_size},
        )


async def due_schedules(engine: AsyncEngine) -> list[tuple[str, dt.datetime, float]]:
    """(name, next due time, jitter) of enabled schedules, soonest first."""
    async with statements(engine) as conn:
        rows = await conn.execute(
            text("SELECT name, next_due_at, jitter_seconds FROM schedules WHERE enabled ORDER BY next_due_at")
        )
        return [(r.name, r.next_due_at, r.jitter_seconds) for r in rows]


async def lock_schedule(conn: AsyncConnection, name: str) -> Any:
    """The schedule row, locked for this transaction (None if deleted or disabled meanwhile)."""
    return (
        await conn.execute(
            text("SELECT *, now() AS db_now FROM schedules WHERE name = :n AND enabled FOR UPDATE"),
            {"n": name},
        )
    ).first()


async def still_leader(conn: AsyncConnection, me: str, epoch: int) -> bool:
    row = (
        await conn.execute(
            text(
                "SELECT 1 FROM scheduler_leader WHERE id = 1 AND holder = :me AND epoch = :epoch "
                "AND expires_at > now() FOR SHARE"
            ),
            {"me": me, "epoch": epoch},
        )
    ).first()
    return row is not None


async def gate(conn: AsyncConnection, processing: str, registered: Sequence[str]) -> str | None:
    """Why a processing's work must wait (paused, or a needed dependency down), or None to go ahead."""
    row = (
        await conn.execute(
            text(
                """
                SELECT coalesce(ps.paused, false) AS paused,
                       (SELECT array_agg(d.name ORDER BY d.name) FROM dependencies d
                        WHERE d.state = 'down'
                          AND d.name = ANY(coalesce(ps.dependencies, CAST(:registered AS text[])))) AS down
                FROM (SELECT 1) AS one
                LEFT JOIN processing_settings ps ON ps.name = :p
                """
            ),
            {"p": processing, "registered": list(registered)},
        )
    ).one()
    if row.paused:
        return "paused"
    if row.down:
        return "dependency down: " + ", ".join(row.down)
    return None


async def record_ticks(
    conn: AsyncConnection,
    schedule: str,
    epoch: int,
    ticks: Sequence[tuple[dt.datetime, str, int, str | None]],
) -> set[dt.datetime]:
    """Record (due time, outcome, tasks, detail) rows; answers the due times newly recorded (once ever)."""
    if not ticks:
        return set()
    rows = await conn.execute(
        text(
            """
            INSERT INTO schedule_ticks (schedule, due_at, outcome, tasks, detail, leader_epoch)
            SELECT :s, d, o, n, x, :epoch
            FROM unnest(CAST(:d AS timestamptz[]), CAST(:o AS text[]), CAST(:n AS int[]), CAST(:x AS text[]))
                 AS v(d, o, n, x)
            ON CONFLICT (schedule, due_at) DO NOTHING
            RETURNING due_at
            """
        ),
        {
            "s": schedule,
            "epoch": epoch,
            "d": [t[0] for t in ticks],
            "o": [t[1] for t in ticks],
            "n": [t[2] for t in ticks],
            "x": [t[3] for t in ticks],
        },
    )
    return {r.due_at for r in rows}


async def advance_schedule(conn: AsyncConnection, name: str, next_due: dt.datetime) -> None:
    await conn.execute(
        text("UPDATE schedules SET next_due_at = :d WHERE name = :n"), {"d": next_due, "n": name}
    )


async def record_poll_tasks(conn: AsyncConnection, tasks: Sequence[tuple[uuid.UUID, str, int]]) -> None:
    """Queued poll tasks (id, processing, batch size), recorded with the tick that emits them."""
    if not tasks:
        return
    await conn.execute(
        text(
            """
            INSERT INTO tasks (id, kind, processing, batch_size)
            SELECT i, 'poll', p, b
            FROM unnest(CAST(:i AS uuid[]), CAST(:p AS text[]), CAST(:b AS int[])) AS v(i, p, b)
            ON CONFLICT (id) DO NOTHING
            """
        ),
        {"i": [t[0] for t in tasks], "p": [t[1] for t in tasks], "b": [t[2] for t in tasks]},
    )


_POLL_NEED = text(
    f"""
    WITH queued AS (
        SELECT count(*) AS n FROM tasks
        WHERE state = 'queued' AND kind = 'poll' AND processing = :job
          AND created_at > now() - make_interval(secs => :fresh)
    )
    SELECT (SELECT n FROM queued) AS queued,
           (SELECT count(*) FROM (
                SELECT 1 FROM items WHERE job = :job AND ({_CLAIMABLE})
                LIMIT ((SELECT n FROM queued) + :max_batches) * :batch_size
           ) AS c) + (SELECT coalesce(sum(item_count), 0) FROM (
                SELECT item_count FROM item_chunks WHERE job = :job
                LIMIT ((SELECT n FROM queued) + :max_batches) * :batch_size
           ) AS c) AS claimable
    """
)
# A poll task queued longer than this is not counted as on its way: it may be lost or stuck (no processor
# for its processing), and the backlog must not wait for it.
QUEUED_POLL_TASK_FRESH_SECONDS = 60.0


async def poll_tasks_needed(conn: AsyncConnection, processing: str, batch_size: int, max_batches: int) -> int:
    """How many poll tasks a tick should emit: one per batch of claimable items, less the poll tasks
    already queued for them (each will claim a batch), at most ``max_batches``. So the scheduler follows
    the backlog without piling up poll tasks a busy processor would run empty; and the count stops at
    what can matter, so a deep backlog costs a tick no more than a shallow one."""
    row = (
        await conn.execute(
            _POLL_NEED,
            {
                "job": processing,
                "fresh": QUEUED_POLL_TASK_FRESH_SECONDS,
                "max_batches": max_batches,
                "batch_size": batch_size,
            },
        )
    ).one()
    return max(0, min(max_batches, math.ceil(row.claimable / batch_size) - row.queued))


# --- operator API: schedules ---------------------------------------------------------------------------

_SCHEDULE_COLUMNS = (
    "name, processing, interval_seconds, cron, timezone, enabled, batch_size, max_batches_per_tick, "
    "misfire_policy, catch_up_limit, jitter_seconds, next_due_at, origin, created_at, updated_at"
)


def _schedule(row: Any) -> dict[str, Any]:
    schedule = dict(row._mapping)
    for key in ("next_due_at", "created_at", "updated_at"):
        schedule[key] = _iso(schedule[key])
    return schedule


async def list_schedules(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with statements(engine) as conn:
        rows = await conn.execute(text(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name"))
        return [_schedule(r) for r in rows]


async def get_schedule(engine: AsyncEngine, name: str, ticks: int = 20) -> dict[str, Any] | None:
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name = :n"), {"n": name}
            )
        ).first()
        if row is None:
            return None
        recent = await conn.execute(
            text(
                "SELECT due_at, outcome, tasks, detail, emitted_at FROM schedule_ticks WHERE schedule = :n "
                "ORDER BY due_at DESC LIMIT :limit"
            ),
            {"n": name, "limit": ticks},
        )
        schedule = _schedule(row)
        schedule["recent_ticks"] = [
            {
                "due_at": _iso(t.due_at),
                "outcome": t.outcome,
                "tasks": t.tasks,
                "detail": t.detail,
                "emitted_at": _iso(t.emitted_at),
            }
            for t in recent
        ]
        return schedule


async def create_schedule(engine: AsyncEngine, values: dict[str, Any], first_due: dt.datetime) -> bool:
    """False if a schedule of that name exists."""
    columns = [*values, "next_due_at"]
    names, placeholders = ", ".join(columns), ", ".join(":" + c for c in columns)
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(
                    f"INSERT INTO schedules ({names}) VALUES ({placeholders}) "
                    "ON CONFLICT (name) DO NOTHING RETURNING name"
                ),
                {**values, "next_due_at": first_due},
            )
        ).first()
    return row is not None


async def update_schedule(
    engine: AsyncEngine, name: str, changes: dict[str, Any], next_due: dt.datetime | None
) -> bool:
    """Apply changes (the keys are validated field names); False if there is no such schedule."""
    if next_due is not None:
        changes = {**changes, "next_due_at": next_due}
    assignments = ", ".join(f"{column} = :{column}" for column in changes)
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(
                    f"UPDATE schedules SET {assignments + ', ' if assignments else ''}updated_at = now() "
                    "WHERE name = :name RETURNING name"
                ),
                {**changes, "name": name},
            )
        ).first()
    return row is not None


async def delete_schedule(engine: AsyncEngine, name: str) -> bool:
    async with statements(engine) as conn:
        row = (
            await conn.execute(text("DELETE FROM schedules WHERE name = :n RETURNING name"), {"n": name})
        ).first()
    return row is not None


async def run_schedule_now(engine: AsyncEngine, name: str) -> dt.datetime | None:
    """Make the schedule due now (the leader fires it at once); its next due time, or None if unknown."""
    async with statements(engine) as conn:
        return (
            await conn.execute(
                text("UPDATE schedules SET next_due_at = now() WHERE name = :n RETURNING next_due_at"),
                {"n": name},
            )
        ).scalar()


# --- operator API: processings and dependencies --------------------------------------------------------


async def processing_settings(engine: AsyncEngine) -> dict[str, tuple[bool, list[str] | None]]:
    """(paused, dependencies override) by processing name."""
    async with statements(engine) as conn:
        rows = await conn.execute(text("SELECT name, paused, dependencies FROM processing_settings"))
        return {r.name: (r.paused, r.dependencies) for r in rows}


async def claimable_counts(engine: AsyncEngine) -> dict[str, int]:
    """Items a poll task could take now, by processing: a count over the backlog, for an operator's view
    (``GET /v1/processings``), not for anything polled every second (see :func:`pending_counts`)."""
    async with statements(engine) as conn:
        rows = await conn.execute(
            text(
                f"""
                SELECT job, sum(n) AS n FROM (
                    SELECT job, count(*) AS n FROM items WHERE {_CLAIMABLE} GROUP BY job
                    UNION ALL
                    SELECT job, sum(item_count) FROM item_chunks GROUP BY job
                ) AS claimable GROUP BY job
                """
            )
        )
        return {r.job: int(r.n) for r in rows}


async def pending_counts(engine: AsyncEngine) -> dict[str, int]:
    """Items recorded and not done or failed yet, by processing (waiting, being processed or waiting out a
    retry delay), from the transactional counters: counting the items themselves took 100 ms of
    PostgreSQL per call with a backlog of 400,000, and the scheduler leader asks every second."""
    return {name: counts["pending"] for name, counts in (await read_stats(engine)).items.items()}


async def patch_processing(
    engine: AsyncEngine, name: str, paused: bool | None, deps: list[str] | None
) -> None:
    async with statements(engine) as conn:
        await conn.execute(
            text(
                """
                INSERT INTO processing_settings (name, paused, dependencies)
                VALUES (:n, coalesce(:paused, false), CAST(:deps AS text[]))
                ON CONFLICT (name) DO UPDATE SET
                    paused = coalesce(:paused, processing_settings.paused),
                    dependencies = CASE WHEN :set_deps THEN CAST(:deps AS text[])
                                        ELSE processing_settings.dependencies END,
                    updated_at = now()
                """
            ),
            {"n": name, "paused": paused, "deps": deps, "set_deps": deps is not None},
        )


_DEPENDENCY_COLUMNS = (
    "name, kind, target, interval_seconds, timeout_seconds, failure_threshold, recovery_threshold, state, "
    "since, last_error, last_checked_at, consecutive_failures, consecutive_successes, origin"
)


def _dependency(row: Any) -> dict[str, Any]:
    dependency = dict(row._mapping)
    if dependency["kind"] in ("http", "sql"):
        dependency["target"] = redact_url(dependency["target"])
    for key in ("since", "last_checked_at"):
        dependency[key] = _iso(dependency[key])
    return dependency


async def list_dependencies(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with statements(engine) as conn:
        rows = await conn.execute(text(f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies ORDER BY name"))
        return [_dependency(r) for r in rows]


async def get_dependency(engine: AsyncEngine, name: str, raw: bool = False) -> dict[str, Any] | None:
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies WHERE name = :n"), {"n": name}
            )
        ).first()
    if row is None:
        return None
    return dict(row._mapping) if raw else _dependency(row)


async def put_dependency(engine: AsyncEngine, name: str, values: dict[str, Any], origin: str) -> str:
    """Create or replace; answers "created", "replaced" or "refused" (an API call on a configured one)."""
    async with statements(engine) as conn:
        row = (
            await conn.execute(
                text(
                    """
                    INSERT INTO dependencies (name, kind, target, interval_seconds, timeout_seconds,
                                              failure_threshold, recovery_threshold, origin)
                    VALUES (:name, :kind, :target, :interval_seconds, :timeout_seconds,
                            :failure_threshold, :recovery_threshold, :origin)
                    ON CONFLICT (name) DO UPDATE SET
                        kind = excluded.kind, target = excluded.target,
                        interval_seconds = excluded.interval_seconds,
                        timeout_seconds = excluded.timeout_seconds,
                        failure_threshold = excluded.failure_threshold,
                        recovery_threshold = excluded.recovery_threshold,
                        state = CASE
                            WHEN (dependencies.kind, dependencies.target) = (excluded.kind, excluded.target)
                            THEN dependencies.state ELSE 'unknown' END
                    WHERE dependencies.origin = :origin
                    RETURNING (xmax = 0) AS created
                    """
                ),
                {**values, "name": name, "origin": origin},
            )
        ).first()
    if row is None:
        return "refused"
    return "created" if row.created else "replaced"


async def delete_dependency(engine: AsyncEngine, name: str) -> str:
    """ "deleted", "missing" or "refused" (configured dependencies are removed from configuration)."""
    async with statements(engine) as conn:
        row = (
            await conn.execute(text("SELECT origin FROM dependencies WHERE name = :n"), {"n": name})
        ).first()
        if row is None:
            return "missing"
        if row.origin != "api":
            return "refused"
        await conn.execute(text("DELETE FROM dependencies WHERE name = :n AND origin = 'api'"), {"n": name})
    return "deleted"


async def dependencies_due(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with statements(engine) as conn:
        rows = await conn.execute(
            text(
                f"SELECT {_DEPENDENCY_COLUMNS} FROM dependencies WHERE last_checked_at IS NULL "
                "OR last_checked_at + make_interval(secs => interval_seconds) <= now()"
            )
        )
        return [dict(r._mapping) for r in rows]


async def record_check(
    engine: AsyncEngine, name: str, state: str, failures: int, successes: int, error: str | None
) -> None:
    async with statements(engine) as conn:
        await conn.execute(
            text(
                """
                UPDATE dependencies SET
                    since = CASE WHEN state <> :state THEN now() ELSE since END,
                    state = :state, consecutive_failures = :f, consecutive_successes = :s,
                    last_error = coalesce(:error, CASE WHEN :state = 'up' THEN NULL ELSE last_error END),
                    last_checked_at = now()
                WHERE name = :n
                """
            ),
            {"n": name, "state": state, "f": failures, "s": successes, "error": error},
        )


# --- API tokens --------------------------------------------------------------------------------------------


class TokenExists(Exception):
    """A token with this name exists (revoked ones too: names are not reused)."""


async def create_token(
    engine: AsyncEngine,
    name: str,
    digest: str,
    scopes: Sequence[str],
    rate_per_second: float | None,
    burst: int | None,
) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(
            text(
                "INSERT INTO api_tokens (name, token_sha256, scopes, rate_per_second, burst) "
                "VALUES (:name, :digest, :scopes, :rate, :burst) ON CONFLICT (name) DO NOTHING"
            ),
            {"name": name, "digest": digest, "scopes": list(scopes), "rate": rate_per_second, "burst": burst},
        )
        if inserted.rowcount == 0:
            raise TokenExists(name)


async def find_token(engine: AsyncEngine, digest: str) -> Any:
    """The live (not revoked) token with this digest, or None."""
    async with statements(engine) as conn:
        result = await conn.execute(
            text(
                "SELECT name, scopes, rate_per_second, burst FROM api_tokens "
                "WHERE token_sha256 = :digest AND revoked_at IS NULL"
            ),
            {"digest": digest},
        )
        return result.first()


async def list_tokens(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with statements(engine) as conn:
        result = await conn.execute(
            text(
                "SELECT name, scopes, rate_per_second, burst, created_at, revoked_at "
                "FROM api_tokens ORDER BY created_at, name"
            )
        )
        return [
            {
                "name": row.name,
                "scopes": list(row.scopes),
                "rate_per_second": row.rate_per_second,
                "burst": row.burst,
                "created_at": _iso(row.created_at),
                "revoked_at": _iso(row.revoked_at),
            }
            for row in result
        ]


async def revoke_token(engine: AsyncEngine, name: str) -> bool:
    """Revoke a token; False when no live token has this name."""
    async with statements(engine) as conn:
        result = await conn.execute(
            text("UPDATE api_tokens SET revoked_at = now() WHERE name = :name AND revoked_at IS NULL"),
            {"name": name},
        )
        return bool(result.rowcount)
