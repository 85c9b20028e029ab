"""A tick emits poll tasks for the claimable backlog, less those already queued for it."""

from __future__ import annotations

import uuid

from squall.core import events
from squall.core.store import intake, item_rules, recording, scheduling
from tests.integration.harness import System


async def _pending_items(system: System, count: int) -> None:
    """A recorded request with ``count`` pending ``mul`` items (as a processor records a batch request)."""
    task_id = uuid.uuid4()
    items_in = [events.Item(number=n, job="mul") for n in range(count)]
    event = events.RequestSubmitted(task_id=task_id, rid=f"backlog-{task_id}", items=items_in)
    await intake.accept_requests(system.engine, [intake.Submitted.of_event(event, False, b"{}")])
    items = recording.NewItems()
    items.add(task_id, list(range(count)), ["mul"] * count, [item_rules.PENDING] * count)
    [recorded] = await recording.record_requests(system.engine, [task_id], items, {})
    assert not recorded.processed


async def _needed(system: System, batch_size: int, max_batches: int) -> int:
    async with system.engine.begin() as conn:
        return await scheduling.poll_tasks_needed(conn, "mul", batch_size, max_batches)


async def _queue_poll_tasks(system: System, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    async with system.engine.begin() as conn:
        await scheduling.record_poll_tasks(conn, [(i, "mul", 2) for i in ids])
    return ids


async def test_emission_follows_the_backlog_less_the_queued_poll_tasks(system: System) -> None:
    assert await _needed(system, batch_size=2, max_batches=8) == 0
    await _pending_items(system, 5)
    assert await _needed(system, batch_size=2, max_batches=8) == 3  # ceil(5 / 2)
    assert await _needed(system, batch_size=2, max_batches=2) == 2  # at most max_batches per tick
    queued = await _queue_poll_tasks(system, 2)
    assert await _needed(system, batch_size=2, max_batches=8) == 1  # two are on their way
    await _queue_poll_tasks(system, 3)
    assert await _needed(system, batch_size=2, max_batches=8) == 0  # never negative
    # A started (running) poll task no longer counts: it claims what it claims, the rest is claimable.
    await system.fetchval("UPDATE tasks SET state = 'running' WHERE id = ANY($1::uuid[])", queued)
    assert await _needed(system, batch_size=2, max_batches=8) == 0  # 3 queued still cover 5 items
    # Poll tasks queued for long (lost, or no processor for them) do not hold the backlog back.
    await system.fetchval(
        "UPDATE tasks SET created_at = now() - interval '5 minutes' WHERE kind = 'poll' AND state = 'queued'"
    )
    assert await _needed(system, batch_size=2, max_batches=8) == 3


async def test_a_deep_backlog_is_counted_only_as_far_as_a_tick_can_use(system: System) -> None:
    await _pending_items(system, 50)
    assert await _needed(system, batch_size=4, max_batches=3) == 3
    await _queue_poll_tasks(system, 10)
    assert await _needed(system, batch_size=4, max_batches=3) == 3  # 50 items: 13 batches, 10 queued
    await _queue_poll_tasks(system, 1)
    assert await _needed(system, batch_size=4, max_batches=3) == 2
