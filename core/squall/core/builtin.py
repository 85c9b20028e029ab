"""The built-in processings: the original example's ``sum`` and ``mul``, and an external-command example."""

from __future__ import annotations

import sys

from squall.core.processings import Processing, processing


# Pure arithmetic that cannot crash the processor: its items are held by row locks (written once).
@processing(name="sum", mode="batch", batch_size=1000, blocking=False, claim="lock")
def add_two(numbers: list[int]) -> list[int]:
    """The original ``sum`` job: n + 2."""
    return [n + 2 for n in numbers]


@processing(name="mul", mode="batch", batch_size=1000, blocking=False, claim="lock")
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
