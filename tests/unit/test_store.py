"""The pure helpers of the store: item digests, result JSON, rid presentation, how new items are laid out."""

from __future__ import annotations

import hashlib
import uuid

import orjson

from squall.core.events import ItemFields
from squall.core.store.driver import pg_array, result_json, results_array
from squall.core.store.intake import items_hash
from squall.core.store.item_rules import CHUNK_MIN_ITEMS, PENDING
from squall.core.store.reads import present_rid
from squall.core.store.recording import NewItems


def items(*pairs: tuple[int, str]) -> list[ItemFields]:
    return [{"number": n, "job": j} for n, j in pairs]


def test_items_hash_is_stable() -> None:
    digest = items_hash(items((1, "sum"), (2, "mul")))
    assert digest == items_hash(items((1, "sum"), (2, "mul")))
    assert isinstance(digest, bytes) and len(digest) == 32


def test_items_hash_hashes_the_text_every_stored_digest_was_made_of() -> None:
    """Digests are stored with each request: an identical re-submission of a request accepted by an older
    version must hash the same."""
    text = "1\x1fsum\x1e-2\x1fmul\x1e"
    assert items_hash(items((1, "sum"), (-2, "mul"))) == hashlib.sha256(text.encode()).digest()


def test_items_hash_depends_on_order_numbers_and_jobs() -> None:
    base = items_hash(items((1, "sum"), (2, "mul")))
    assert base != items_hash(items((2, "mul"), (1, "sum")))
    assert base != items_hash(items((1, "sum"), (3, "mul")))
    assert base != items_hash(items((1, "sum"), (2, "sum")))
    assert base != items_hash(items((1, "sum")))
    assert items_hash(items((12, "sum"))) != items_hash(items((1, "sum"), (2, "sum")))


def test_result_json() -> None:
    assert result_json(5) == "5"
    assert result_json([1, "a", None]) == '[1,"a",null]'
    assert result_json(2**64) == "18446744073709551616"
    assert result_json({"n": -(2**70)}) == '{"n": -1180591620717411303424}'


def test_present_rid() -> None:
    assert present_rid("42", True) == 42
    assert present_rid("-9223372036854775808", True) == -(2**63)
    assert present_rid("42", False) == "42"
    assert present_rid("order-1", False) == "order-1"


def test_pending_items_of_chunked_processings_become_chunks_of_at_most_their_size() -> None:
    request = uuid.uuid4()
    new = NewItems({"sum": 4, "mul": 5})
    jobs = ["sum"] * 11 + ["mul"] * 8 + ["cube"]
    outcomes = [PENDING] * len(jobs)
    outcomes[3] = ("pending", None, "ConnectionError", 1.0)  # waiting for a retry: stays a row
    outcomes[19] = ("done", "27", None, None)  # an immediate processing's item: a row
    new.add(request, list(range(len(jobs))), jobs, outcomes)
    assert new.chunks == [
        (request, 0, "sum", [0, 1, 2, 4], [0, 1, 2, 4]),
        (request, 1, "sum", [5, 6, 7, 8], [5, 6, 7, 8]),
        (request, 2, "sum", [9, 10], [9, 10]),
        (request, 3, "mul", [11, 12, 13, 14, 15], [11, 12, 13, 14, 15]),
        (request, 4, "mul", [16, 17, 18], [16, 17, 18]),
    ]
    assert list(zip(new.position, new.job, new.state, strict=True)) == [
        (3, "sum", "pending"),
        (19, "cube", "done"),
    ]
    assert new.pending_requests() == {request}
    document = orjson.loads(new.as_json())
    assert document["chunks"][0] == [str(request), 0, "sum", "{0,1,2,4}", "{0,1,2,4}"]
    assert document["p"] == [3, 19]


def test_fewer_items_than_a_chunk_is_worth_stay_rows() -> None:
    request, small, complete = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    new = NewItems({"sum": 100})
    # Eight sum items make a chunk; seven, beside eight of an unchunked processing, stay rows.
    new.add(request, list(range(CHUNK_MIN_ITEMS)), ["sum"] * CHUNK_MIN_ITEMS, [PENDING] * CHUNK_MIN_ITEMS)
    new.add(small, list(range(15)), ["sum"] * 7 + ["mul"] * 8, [PENDING] * 15)
    new.add(complete, [3], ["sum"], [("done", "5", None, None)])
    assert [(c[0], len(c[3])) for c in new.chunks] == [(request, CHUNK_MIN_ITEMS)]
    assert new.request_task_id == [small] * 15 + [complete]
    assert new.pending_requests() == {request, small}


def test_done_items_of_a_processing_become_one_result_row_after_the_chunks() -> None:
    request, few = uuid.uuid4(), uuid.uuid4()
    new = NewItems({"sum": 100})
    jobs = ["sum"] * 8 + ["cube"] * 10
    outcomes = [PENDING] * 8 + [("done", str(n**3), None, None) for n in range(8, 18)]
    outcomes[12] = ("failed", None, "too big", None)  # failed: stays a row, the others still make a row
    new.add(request, list(range(len(jobs))), jobs, outcomes)
    # Seven done items of a request are not worth a result row.
    new.add(few, list(range(7)), ["cube"] * 7, [("done", "1", None, None)] * 7)
    assert [c[:3] for c in new.chunks] == [(request, 0, "sum")]
    positions = [8, 9, 10, 11, 13, 14, 15, 16, 17]
    [(task, part, job, done_positions, numbers, results)] = new.done
    assert (task, part, job, done_positions, numbers) == (request, 1, "cube", positions, positions)
    assert orjson.loads(orjson.dumps(results)) == [n**3 for n in positions]
    assert list(zip(new.request_task_id, new.position, new.state, strict=True)) == [
        (request, 12, "failed"),
        *[(few, p, "done") for p in range(7)],
    ]
    assert new.pending_requests() == {request}
    document = orjson.loads(new.as_json())
    assert document["done"] == [
        [str(request), 1, "cube", pg_array(positions), pg_array(positions), [n**3 for n in positions]]
    ]
    assert new.outcomes() == {("sum", "pending"): 8, ("cube", "done"): 16, ("cube", "failed"): 1}
    assert new.outcomes(of={few}) == {("cube", "done"): 7}


def test_a_request_done_whole_is_the_same_result_row_from_add_done() -> None:
    request = uuid.uuid4()
    numbers = list(range(10, 20))
    by_item, whole = NewItems(), NewItems()
    by_item.add(request, numbers, ["sum"] * 10, [("done", str(n + 2), None, None) for n in numbers])
    fragment = results_array([n + 2 for n in numbers])
    assert fragment is not None
    whole.add_done(request, "sum", numbers, fragment)
    assert orjson.loads(whole.as_json()) == orjson.loads(by_item.as_json())
    assert whole.outcomes() == by_item.outcomes() == {("sum", "done"): 10}
    assert whole.pending_requests() == set()


def test_results_array_leaves_integers_beyond_64_bits_to_result_json() -> None:
    fragment = results_array([1, "a", None, {"k": [2.5]}])
    assert fragment is not None
    assert orjson.loads(orjson.dumps([fragment])) == [[1, "a", None, {"k": [2.5]}]]
    assert results_array([1, 2**64]) is None
    assert result_json(2**64) == str(2**64)


def test_pg_array() -> None:
    assert pg_array(range(3)) == pg_array([0, 1, 2]) == "{0,1,2}"
    assert pg_array(range(0)) == "{}"
    assert pg_array(range(2, 5)) == "{2,3,4}"
    assert pg_array([]) == "{}"
    assert pg_array([0, -1, 2**62]) == "{0,-1,4611686018427387904}"
