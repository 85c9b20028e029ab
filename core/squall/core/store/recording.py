"""The processor records a request: its items (as rows, a chunk or a result row) with their outcomes, in
one statement per group of requests; then marks the requests whose items are all done processed."""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core.store.driver import autocommit_connection, embedded_json, fetch_on_driver, pg_array
from squall.core.store.item_rules import CHUNK_MIN_ITEMS, PENDING, Outcome


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
            "r": embedded_json(self.result),
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
    async with autocommit_connection(engine) as conn:
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
