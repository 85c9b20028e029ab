"""The items a request recording inserts, laid out before its transaction (``compute_items``).

Items of ``immediate`` processings are computed here, each processing running the items of every request
of the batch at once, so the recording inserts them with their results; items of batch processings are
left pending for poll tasks; items of unknown processings fail.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from squall.core import events
from squall.core.processings import ItemFailed, Processing, ProcessingError, Registry
from squall.core.store import driver, item_rules, recording
from squall.processor.outcomes import PENDING, Outcome, failed_outcome, outcome_of

ImmediatePart = tuple[events.RequestEvent, list[int] | None]
"""A request's share of an immediate processing's run: the request and its item positions (None: all)."""


class FailedBatch(NamedTuple):
    """A batch of an immediate processing's run that failed as a whole: its slice of the run's numbers."""

    start: int
    stop: int
    error: ProcessingError


@dataclass(slots=True)
class ItemLayout:
    """What ``compute_items`` builds up for the recording."""

    items: recording.NewItems
    dead: dict[uuid.UUID, str] = field(default_factory=dict)  # request task → the error that killed it
    by_item: dict[uuid.UUID, list[Outcome]] = field(default_factory=dict)  # requests laid out item by item


async def compute_items(
    registry: Registry, chunk_sizes: Mapping[str, int], requests: Sequence[events.RequestEvent]
) -> tuple[recording.NewItems, dict[uuid.UUID, str]]:
    """The items of ``requests`` (distinct) to record: computed for immediate processings, failed for
    unknown ones, pending (for poll tasks) for batch ones; and the request tasks that are dead, with the
    error: an item failed for good by a batch error (no attempt left, a permanent error) or an unknown
    processing. ``ItemFailed`` is an answer, not a task failure.

    Each immediate processing computes the items of every request at once, ``batch_size`` at a time. A
    request of one immediate processing whose items all came back as plain results (the usual case) is
    recorded from its slice of the results without an outcome per item; the others item by item."""
    layout = ItemLayout(recording.NewItems(chunk_sizes))
    for job, parts in _immediate_work(registry, requests, layout).items():
        proc = registry[job]
        numbers: list[int] = []
        for event, taken in parts:
            numbers.extend(event.numbers if taken is None else [event.numbers[p] for p in taken])
        results, failed = await _run_first_attempt(proc, numbers)
        _lay_out_results(layout, proc, job, parts, results, failed)
    for event in requests:
        if event.task_id in layout.by_item:
            layout.items.add(event.task_id, event.numbers, event.jobs, layout.by_item[event.task_id])
    return layout.items, layout.dead


def _immediate_work(
    registry: Registry, requests: Sequence[events.RequestEvent], layout: ItemLayout
) -> dict[str, list[ImmediatePart]]:
    """Per immediate processing, the requests' items it computes; the items nothing computes now are laid
    out meanwhile (pending for poll tasks, failed for an unknown processing)."""
    by_job: dict[str, list[ImmediatePart]] = defaultdict(list)
    for event in requests:
        jobs = event.jobs
        if jobs.count(jobs[0]) == len(jobs):  # one processing: the usual request
            proc = registry.get(jobs[0])
            if proc is not None and proc.mode == "immediate":
                by_job[jobs[0]].append((event, None))
                continue
            if proc is not None:  # every item left to poll tasks (the common case of a batch processing)
                layout.by_item[event.task_id] = [PENDING] * len(jobs)
                continue
        for job, positions in _lay_out_mixed(registry, event, layout).items():
            by_job[job].append((event, positions))
    return by_job


def _lay_out_mixed(
    registry: Registry, event: events.RequestEvent, layout: ItemLayout
) -> dict[str, list[int]]:
    """Lay out item by item a request of several processings (or of an unknown one): its items of batch
    processings pending, of unknown ones failed; the positions each immediate processing is to compute."""
    row = layout.by_item[event.task_id] = [PENDING] * len(event.jobs)
    wanted: dict[str, list[int]] = defaultdict(list)
    for position, job in enumerate(event.jobs):
        proc = registry.get(job)
        if proc is None:
            error = f"unknown processing {job!r}"
            row[position] = ("failed", None, error, None)
            layout.dead.setdefault(event.task_id, error)
        elif proc.mode == "immediate":
            wanted[job].append(position)
    return wanted


async def _run_first_attempt(proc: Processing, numbers: list[int]) -> tuple[list[Any], list[FailedBatch]]:
    """``numbers`` run through ``proc``, ``batch_size`` at a time: the results (None where a batch failed)
    and the batches that failed. The first attempt: a retryable failure leaves the items pending for the
    processing's schedule, which claims them after the backoff like a batch processing's."""
    results: list[Any] = []
    failed: list[FailedBatch] = []
    for start in range(0, len(numbers), proc.batch_size):
        batch = numbers[start : start + proc.batch_size]
        try:
            results.extend(await proc.run(batch))
        except ProcessingError as exc:
            failed.append(FailedBatch(start, start + len(batch), exc))
            results.extend([None] * len(batch))
    return results, failed


def _lay_out_results(
    layout: ItemLayout,
    proc: Processing,
    job: str,
    parts: list[ImmediatePart],
    results: list[Any],
    failed: list[FailedBatch],
) -> None:
    """Hand each request its slice of an immediate processing's results: whole when it can be, else item
    by item."""
    offset = 0
    for event, taken in parts:
        count = len(event.numbers) if taken is None else len(taken)
        mine = results[offset : offset + count]
        whole = _whole_results(taken, mine, offset, failed)
        if whole is not None:
            layout.items.add_done(event.task_id, job, event.numbers, whole)
        else:
            _lay_out_by_item(layout, proc, event, taken, mine, offset, failed)
        offset += count


def _whole_results(
    taken: list[int] | None, mine: list[Any], offset: int, failed: list[FailedBatch]
) -> orjson.Fragment | None:
    """A request's results as one array when it needs no outcome per item: all its items are of this
    processing, enough of them to be recorded as chunks, none in a failed batch, none ``ItemFailed``, all
    plain JSON. Else None."""
    count = len(mine)
    if (
        taken is None
        and count >= item_rules.CHUNK_MIN_ITEMS
        and not any(start < offset + count and offset < stop for start, stop, _ in failed)
        and not any(issubclass(kind, ItemFailed) for kind in set(map(type, mine)))
    ):
        return driver.results_array(mine)
    return None


def _lay_out_by_item(
    layout: ItemLayout,
    proc: Processing,
    event: events.RequestEvent,
    taken: list[int] | None,
    mine: list[Any],
    offset: int,
    failed: list[FailedBatch],
) -> None:
    """Lay out a request's results one outcome per item; an item in a failed batch fails, or goes back to
    pending when the failure is retryable."""
    row = layout.by_item.setdefault(event.task_id, [PENDING] * len(event.numbers))
    for index, position in enumerate(range(len(mine)) if taken is None else taken):
        at = offset + index
        failure = next((exc for start, stop, exc in failed if start <= at < stop), None)
        if failure is None:
            row[position] = outcome_of(mine[index])
        else:
            row[position] = failed_outcome(proc, failure, attempts=1)
            if row[position][0] == "failed":
                layout.dead.setdefault(event.task_id, str(failure))
