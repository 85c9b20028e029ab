"""The rules of an item's state that recording and polling share: its outcome, which items anyone may claim,
and from how many items a request's items of one processing are stored as one row."""

from __future__ import annotations

Outcome = tuple[str, str | None, str | None, float | None]
"""An item's (state: pending, done or failed; result as JSON text; error; seconds before it may be retried:
an immediate item that failed retryably waits this long, its first attempt made)."""


PENDING: Outcome = ("pending", None, None, None)  # a batch processing's item, left to its poll tasks


# A request's items of one processing are recorded as a chunk (pending) or a result row (done) from this
# many on: below it, a chunk row (and taking it alone) costs PostgreSQL more than the item rows (the P1
# batch benchmark with one-item chunks, docs/history/benchmarks.md).
CHUNK_MIN_ITEMS = 8


# Items anyone may claim: pending ones past their retry delay, and running ones whose lease expired (their
# processor died).
CLAIMABLE = (
    "(state = 'pending' AND (not_before IS NULL OR not_before <= now())) "
    "OR (state = 'running' AND lease_until < now())"
)
