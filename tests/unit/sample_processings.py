"""Processings registered by the unit tests through ``SQUALL_PROCESSING_MODULES`` (not a test module)."""

from __future__ import annotations

from squall.core.processings import processing


@processing(name="sample_cube", mode="batch", batch_size=50, timeout_seconds=12.0)
def cube(numbers: list[int]) -> list[int]:
    return [n**3 for n in numbers]


@processing(name="sample_negate", mode="immediate", batch_size=10)
async def negate(numbers: list[int]) -> list[int]:
    return [-n for n in numbers]


PROCESSINGS = [cube, negate]
NOT_A_PROCESSING = 42
