"""How the processor computes and lays out a recording's items (``compute_items``): the whole-request path
must record exactly what the item-by-item path records, and everything it does not take goes item by item."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from squall.core.events import RequestEvent
from squall.core.processings import ItemFailed, PermanentError, Processing, Registry
from squall.core.store import item_rules, recording
from squall.processor.new_items import compute_items
from squall.processor.outcomes import outcome_of

MANY = item_rules.CHUNK_MIN_ITEMS + 2


def _plus_two(numbers: list[int]) -> list[Any]:
    return [n + 2 for n in numbers]


def _odd_fails(numbers: list[int]) -> list[Any]:
    return [ItemFailed(f"{n} is odd") if n % 2 else n for n in numbers]


def _refuse_big(numbers: list[int]) -> list[Any]:
    if max(numbers) >= 1000:
        raise ValueError("too big for this batch")
    return numbers


def _refuse_for_good(numbers: list[int]) -> list[Any]:
    raise PermanentError("never")


def _huge(numbers: list[int]) -> list[Any]:
    return [n * 2**64 for n in numbers]


def immediate(name: str, function: Any, batch_size: int = 1000, max_attempts: int = 3) -> Processing:
    return Processing(
        name=name,
        function=function,
        mode="immediate",
        batch_size=batch_size,
        blocking=False,
        max_attempts=max_attempts,
    )


REGISTRY = Registry(
    [
        immediate("plus", _plus_two, batch_size=25),
        immediate("odd", _odd_fails),
        immediate("picky", _refuse_big, batch_size=MANY),
        immediate("never", _refuse_for_good),
        immediate("huge", _huge),
        Processing(name="later", function=_plus_two, mode="batch", blocking=False, claim="lock"),
    ]
)
CHUNKS = {"later": 100}


def request(numbers: list[int], jobs: list[str] | str) -> RequestEvent:
    return RequestEvent(
        uuid.uuid4(), "r", numbers, [jobs] * len(numbers) if isinstance(jobs, str) else list(jobs)
    )


def by_item(event: RequestEvent, outcomes: list[item_rules.Outcome]) -> dict[str, Any]:
    """What the item-by-item path records for ``event`` with these outcomes."""
    items = recording.NewItems(CHUNKS)
    items.add(event.task_id, event.numbers, event.jobs, outcomes)
    return orjson.loads(items.as_json())


async def test_whole_requests_record_what_item_by_item_recording_does() -> None:
    # 3 x 10 items of "plus" in batches of 25: a batch spans two requests.
    requests = [request(list(range(i * 100, i * 100 + MANY)), "plus") for i in range(3)]
    items, dead = await compute_items(REGISTRY, CHUNKS, requests)
    assert dead == {}
    assert items.request_task_id == []  # no item rows: one result row each
    assert [done[0] for done in items.done] == [r.task_id for r in requests]
    recorded = orjson.loads(items.as_json())
    for index, event in enumerate(requests):
        expected = by_item(event, [outcome_of(n + 2) for n in event.numbers])
        assert recorded["done"][index] == expected["done"][0]
    assert items.outcomes() == {("plus", "done"): 3 * MANY}


async def test_a_request_with_an_item_failed_goes_item_by_item() -> None:
    event = request(list(range(MANY)), "odd")
    items, dead = await compute_items(REGISTRY, CHUNKS, [event])
    assert dead == {}  # an item failed is an answer, not a failed task
    assert orjson.loads(items.as_json()) == by_item(event, [outcome_of(v) for v in _odd_fails(event.numbers)])
    assert items.outcomes() == {("odd", "done"): MANY // 2, ("odd", "failed"): MANY // 2}


async def test_a_failed_batch_leaves_its_requests_items_pending_and_spares_the_others() -> None:
    # Batches of MANY: the first request's batch succeeds, the second's fails (retryable, attempts left).
    fine, refused = request(list(range(MANY)), "picky"), request(list(range(1000, 1000 + MANY)), "picky")
    items, dead = await compute_items(REGISTRY, CHUNKS, [fine, refused])
    assert dead == {}
    assert [done[0] for done in items.done] == [fine.task_id]
    assert set(items.request_task_id) == {refused.task_id}
    assert set(items.state) == {"pending"}
    assert all(delay is not None and delay > 0 for delay in items.retry_in)
    assert all(error is not None and "too big" in error for error in items.error)
    assert items.pending_requests() == {refused.task_id}


async def test_a_permanent_failure_fails_the_items_and_the_task() -> None:
    event = request(list(range(MANY)), "never")
    items, dead = await compute_items(REGISTRY, CHUNKS, [event])
    assert set(items.state) == {"failed"}
    assert dead == {event.task_id: "permanent: never"}


async def test_results_beyond_64_bits_are_encoded_one_by_one() -> None:
    event = request(list(range(MANY)), "huge")
    items, dead = await compute_items(REGISTRY, CHUNKS, [event])
    assert dead == {}
    assert orjson.loads(items.as_json()) == by_item(event, [outcome_of(n * 2**64) for n in event.numbers])


async def test_mixed_unknown_small_and_batch_requests() -> None:
    mixed = request([1, 2, 3, 4], ["plus", "later", "nope", "plus"])
    small = request([5], "plus")
    later = request(list(range(MANY)), "later")
    items, dead = await compute_items(REGISTRY, CHUNKS, [mixed, small, later])
    assert dead == {mixed.task_id: "unknown processing 'nope'"}
    columns = (items.request_task_id, items.position, items.state, items.result)
    rows = {(t, p): (s, r) for t, p, s, r in zip(*columns, strict=True)}
    assert rows == {
        (mixed.task_id, 0): ("done", "3"),
        (mixed.task_id, 1): ("pending", None),
        (mixed.task_id, 2): ("failed", None),
        (mixed.task_id, 3): ("done", "6"),
        (small.task_id, 0): ("done", "7"),
    }
    assert [(c[0], len(c[3])) for c in items.chunks] == [(later.task_id, MANY)]
    assert items.pending_requests() == {mixed.task_id, later.task_id}


async def test_a_processing_that_answers_too_few_results_fails_its_batch() -> None:
    short = immediate("short", lambda numbers: numbers[:-1], max_attempts=1)
    event = request(list(range(MANY)), "short")
    items, dead = await compute_items(Registry([short]), {}, [event])
    assert set(items.state) == {"failed"}
    assert event.task_id in dead and "instead of" in dead[event.task_id]
