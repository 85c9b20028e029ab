"""Reads of tasks and requests, as the API (gateway) and the command line show them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.events import read_request_submitted
from squall.core.store.driver import autocommit_connection, iso_time

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
        "created_at": iso_time(row.created_at),
        "updated_at": iso_time(row.updated_at),
        "error": row.error,
        "rid": present_rid(row.rid, bool(row.rid_is_int)) if row.rid is not None else None,
    }
    if row.kind == "poll":
        task["processing"] = row.processing
        task["items_processed"] = row.items_processed
    return task


async def get_task(engine: AsyncEngine, task_id: uuid.UUID) -> dict[str, Any] | None:
    async with autocommit_connection(engine) as conn:
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
    async with autocommit_connection(engine) as conn:
        rows = (await conn.execute(text(query), params)).all()
    following = (rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return [_task(r) for r in rows[:limit]], following


async def get_request(engine: AsyncEngine, rid: str) -> dict[str, Any] | None:
    async with autocommit_connection(engine) as conn:
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
    async with autocommit_connection(engine) as conn:
        return (
            await conn.execute(text("SELECT rid FROM requests WHERE task_id = :t"), {"t": task_id})
        ).scalar()


def present_rid(rid: str, rid_is_int: bool) -> int | str:
    return int(rid) if rid_is_int else rid
