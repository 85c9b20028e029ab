"""The pure helpers of the store: item digests, result JSON and rid presentation."""

from __future__ import annotations

import hashlib

from squall.core.events import ItemFields
from squall.core.store import items_hash, present_rid, result_json


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
