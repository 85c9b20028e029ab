"""The gateway's intake: accept concurrent submissions in one INSERT (the unique rid decides new, identical
re-submission or conflict) and withdraw an acceptance whose event could not be published."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core.events import ItemFields, RequestSubmitted
from squall.core.store.driver import autocommit_connection, fetch_on_driver


def items_hash(items: Sequence[ItemFields]) -> bytes:
    """A digest of the items in order: equal digests mean an identical re-submission. (Stored: the text
    hashed must never change, or a re-submission of an older request would be taken for a conflict.)"""
    return hashlib.sha256("".join([f"{i['number']}\x1f{i['job']}\x1e" for i in items]).encode()).digest()


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
                conn = await stack.enter_async_context(autocommit_connection(engine))
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
