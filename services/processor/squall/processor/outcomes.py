"""What an item's outcome is, from what its processing answered or how its batch failed.

Shared by the immediate computation at recording (:mod:`.new_items`) and by poll tasks
(:mod:`.poll_tasks`), so an item ends the same way whichever path computed it.
"""

from __future__ import annotations

from typing import Any

from squall.core.processings import ItemFailed, Processing, ProcessingError
from squall.core.store import driver, item_rules

Outcome = item_rules.Outcome
PENDING = item_rules.PENDING


async def run_batch(
    proc: Processing, numbers: list[int], attempts: list[int]
) -> tuple[list[Outcome], str | None]:
    """Outcomes per number, and the error that failed the whole batch if it did."""
    try:
        results = await proc.run(numbers)
    except ProcessingError as exc:
        return [failed_outcome(proc, exc, made) for made in attempts], str(exc)
    return [outcome_of(value) for value in results], None


def outcome_of(value: Any) -> Outcome:
    """An item's outcome from what its processing answered for it."""
    if isinstance(value, ItemFailed):
        return ("failed", None, value.message, None)
    return ("done", driver.result_json(value), None, None)


def failed_outcome(proc: Processing, exc: ProcessingError, attempts: int) -> Outcome:
    """An item's outcome when its whole batch failed: a retryable failure puts it back to pending, after
    the processing's backoff, while it has attempts left (``attempts`` made, this one included); else it
    fails."""
    if exc.retryable and attempts < proc.max_attempts:
        return ("pending", None, str(exc), proc.retry_delay(attempts))
    return ("failed", None, str(exc), None)
