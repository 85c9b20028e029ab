"""The built-in processings: ``sum`` (n + 2), ``mul`` (n * 2) and the external command ``square``."""

from __future__ import annotations

import sys

from squall.core.builtin import PROCESSINGS, add_two, square, times_two

BATCH = [0, 1, -3, 2**62, -(2**63)]


async def test_sum_adds_two() -> None:
    assert add_two.name == "sum"
    assert await add_two.run(BATCH) == [n + 2 for n in BATCH]


async def test_mul_doubles() -> None:
    assert times_two.name == "mul"
    assert await times_two.run(BATCH) == [n * 2 for n in BATCH]


async def test_results_may_exceed_64_bits() -> None:
    assert await times_two.run([2**63 - 1]) == [2**64 - 2]


async def test_square_command_answers_squares() -> None:
    assert square.command == (sys.executable, "-m", "squall.core.examples.square")
    assert square.function is None
    assert await square.run([0, 3, -4, 2**40]) == [0, 9, 16, 2**80]


async def test_square_of_an_empty_batch() -> None:
    assert await square.run([]) == []


def test_builtin_list() -> None:
    assert [p.name for p in PROCESSINGS] == ["sum", "mul", "square"]
    assert all(p.mode == "batch" for p in PROCESSINGS)
