"""The gateway's admission control (squall.gateway.admission), with a scripted backlog."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from squall.core.http import ApiError
from squall.gateway.admission import Admission


def scripted(*values: int, error: Exception | None = None) -> tuple[Callable[[], Awaitable[int]], list[int]]:
    """A backlog reader answering ``values`` in turn (the last one from then on); records each read."""
    reads: list[int] = []

    async def read() -> int:
        if error is not None:
            raise error
        value = values[min(len(reads), len(values) - 1)]
        reads.append(value)
        return value

    return read, reads


async def test_under_the_limit_a_submission_goes_through_at_once() -> None:
    read, reads = scripted(4)
    await Admission(read, max_backlog_items=5, wait_seconds=10).admit()
    assert reads == [4]


async def test_no_limit_reads_nothing() -> None:
    read, reads = scripted(10**9)
    await Admission(read, max_backlog_items=0, wait_seconds=10).admit()
    assert reads == []


async def test_over_the_limit_a_submission_waits_until_there_is_room() -> None:
    read, reads = scripted(5, 7, 6, 4)
    await Admission(read, max_backlog_items=5, wait_seconds=10).admit()
    assert reads == [5, 7, 6, 4]


async def test_a_backlog_that_stays_full_is_refused_with_503_after_the_wait() -> None:
    read, _ = scripted(9)
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        await Admission(read, max_backlog_items=5, wait_seconds=0.6).admit()
    assert 0.55 <= time.monotonic() - started < 2
    error = refused.value
    assert (error.status, error.code, error.field) == (503, "overloaded", None)
    assert "9 items" in error.message and "limit of 5" in error.message
    assert int(error.headers["Retry-After"]) > 0


async def test_with_no_wait_a_full_backlog_is_refused_at_once() -> None:
    read, reads = scripted(5)
    with pytest.raises(ApiError):
        await Admission(read, max_backlog_items=5, wait_seconds=0).admit()
    assert reads == [5]


async def test_an_unreadable_backlog_does_not_refuse_anything() -> None:
    read, _ = scripted(error=ConnectionRefusedError("database down"))
    await Admission(read, max_backlog_items=5, wait_seconds=10).admit()
