"""The built-in processings: the original example's ``sum`` and ``mul``, and an external-command example."""

from __future__ import annotations

import sys

from squall.core.processings import Processing, processing

# Pure arithmetic that cannot crash the processor: its items are held by row locks (written once). Batches
# of 5,000: what a poll task costs besides the arithmetic (a dozen round trips, its message, the
# scheduler's emission) hardly grows with its size, and at 1,000 items it bounded the P2 batch
# benchmark (58,406 items/s, 9 s of backlog after the load; 94,951 and 0.1 s at 5,000, migration 0012).
BUILTIN_BATCH_SIZE = 5000


@processing(name="sum", mode="batch", batch_size=BUILTIN_BATCH_SIZE, blocking=False, claim="lock")
def add_two(numbers: list[int]) -> list[int]:
    """The original ``sum`` job: n + 2."""
    return [n + 2 for n in numbers]


@processing(name="mul", mode="batch", batch_size=BUILTIN_BATCH_SIZE, blocking=False, claim="lock")
def times_two(numbers: list[int]) -> list[int]:
    """The original ``mul`` job: n * 2."""
    return [n * 2 for n in numbers]


# An external command: JSON batch on stdin, JSON results on stdout (see squall.core.examples.square).
square = Processing(
    name="square",
    command=(sys.executable, "-m", "squall.core.examples.square"),
    mode="batch",
    batch_size=1000,
    timeout_seconds=30.0,
)

PROCESSINGS = [add_two, times_two, square]
