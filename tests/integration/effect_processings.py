"""Processings for tests that count their effects (registered with SQUALL_PROCESSING_MODULES)."""

from __future__ import annotations

import asyncio
import os

from squall.core.processings import ItemFailed, PermanentError, processing

EFFECT_LOG_ENV = "SQUALL_TEST_EFFECT_LOG"
# In-process runs: every number a `record` batch computed, in order.
RECORDED: list[int] = []


@processing(name="record", mode="batch", batch_size=100)
async def record(numbers: list[int]) -> list[int]:
    await asyncio.sleep(0.01)  # widen the window in which two processors could collide
    RECORDED.extend(numbers)
    return [n + 1 for n in numbers]


@processing(name="slow_record", mode="batch", batch_size=25, timeout_seconds=30)
async def slow_record(numbers: list[int]) -> list[int]:
    """Slow enough to be killed mid-batch; appends what it computed to the file named by the env."""
    await asyncio.sleep(1.5)
    path = os.environ.get(EFFECT_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write("".join(f"{n}\n" for n in numbers))
    return [n + 1 for n in numbers]


@processing(name="record_locked", mode="batch", batch_size=100, claim="lock")
async def record_locked(numbers: list[int]) -> list[int]:
    """``record`` with its items held by row locks instead of leases."""
    await asyncio.sleep(0.01)
    RECORDED.extend(numbers)
    return [n + 1 for n in numbers]


@processing(name="slow_locked", mode="batch", batch_size=25, timeout_seconds=30, claim="lock")
async def slow_locked(numbers: list[int]) -> list[int]:
    """``slow_record`` under row locks; logs ``-n`` when it starts on n, ``n`` when it is done."""
    path = os.environ.get(EFFECT_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write("".join(f"-{n}\n" for n in numbers))
    await asyncio.sleep(1.5)
    if path:
        with open(path, "a") as log:
            log.write("".join(f"{n}\n" for n in numbers))
    return [n + 1 for n in numbers]


def _fail_the_first_call(calls: list[list[int]], numbers: list[int], error: Exception) -> None:
    """Note this call in ``calls``; raise ``error`` if it is the first one noted there."""
    calls.append(numbers)
    if len(calls) == 1:
        raise error


FLAKY_CALLS: list[list[int]] = []


@processing(name="flaky", mode="batch", batch_size=100, max_attempts=3, backoff_seconds=0.5)
def flaky(numbers: list[int]) -> list[int]:
    """Fails its first call (a retryable error), then works."""
    _fail_the_first_call(FLAKY_CALLS, numbers, ConnectionError("the shared file system blinked"))
    return [n * 10 for n in numbers]


@processing(name="refuse", mode="batch", batch_size=100, max_attempts=5)
def refuse(numbers: list[int]) -> list[int]:
    """Fails permanently: no retry."""
    raise PermanentError("this input can never be processed")


REFUSE_ONCE_CALLS: list[list[int]] = []


@processing(name="refuse_once", mode="batch", batch_size=100)
def refuse_once(numbers: list[int]) -> list[int]:
    """Fails permanently the first time (say, a missing input file), works once an operator fixed it."""
    _fail_the_first_call(REFUSE_ONCE_CALLS, numbers, PermanentError("input file missing"))
    return [n + 1000 for n in numbers]


@processing(name="campaign", mode="batch", batch_size=40, timeout_seconds=30)
async def campaign(numbers: list[int]) -> list[int]:
    """The fault campaign's batch processing: every computation is appended to the effect log first, then
    it works on for a while, so a SIGKILL often lands after the computation and before the result is
    committed: the batch runs again (it shows twice in the log) but its results are written once."""
    path = os.environ.get(EFFECT_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write("".join(f"{n}\n" for n in numbers))
    await asyncio.sleep(0.3)
    return [n * 3 for n in numbers]


FLAKY_NOW_CALLS: list[list[int]] = []


@processing(name="flaky_now", mode="immediate", batch_size=100, max_attempts=3, backoff_seconds=0.2)
def flaky_now(numbers: list[int]) -> list[int]:
    """An immediate processing whose first call fails retryably (its items wait for the schedule)."""
    _fail_the_first_call(FLAKY_NOW_CALLS, numbers, TimeoutError("the pricing service timed out"))
    return [n * 7 for n in numbers]


BROKEN_NOW_CALLS: list[list[int]] = []


@processing(name="broken_now", mode="immediate", batch_size=100, max_attempts=2, backoff_seconds=0.1)
def broken_now(numbers: list[int]) -> list[int]:
    """An immediate processing that always fails retryably: its items end failed, their task dead."""
    BROKEN_NOW_CALLS.append(numbers)
    raise ConnectionError("the upstream is gone")


REFUSE_ONCE_NOW_CALLS: list[list[int]] = []


@processing(name="refuse_once_now", mode="immediate", batch_size=100)
def refuse_once_now(numbers: list[int]) -> list[int]:
    """Immediate; fails permanently the first time (at recording), works once an operator fixed things."""
    _fail_the_first_call(REFUSE_ONCE_NOW_CALLS, numbers, PermanentError("the price list is missing"))
    return [n + 5 for n in numbers]


FLAKY_LOCKED_CALLS: list[list[int]] = []


@processing(
    name="flaky_locked", mode="batch", batch_size=100, max_attempts=3, backoff_seconds=0.3, claim="lock"
)
def flaky_locked(numbers: list[int]) -> list[int]:
    """``flaky`` under row locks: fails its first call (retryable), then works."""
    _fail_the_first_call(FLAKY_LOCKED_CALLS, numbers, ConnectionError("the shared file system blinked"))
    return [n * 10 for n in numbers]


def _refuse_multiples_of_five(numbers: list[int]) -> list[int | ItemFailed]:
    return [ItemFailed("a multiple of five") if n % 5 == 0 else n * 2 for n in numbers]


@processing(name="picky_now", mode="immediate", batch_size=100)
def picky_now(numbers: list[int]) -> list[int | ItemFailed]:
    """Doubles each number, but fails the multiples of five (an answer per item, not a batch error)."""
    return _refuse_multiples_of_five(numbers)


@processing(name="picky_locked", mode="batch", batch_size=100, claim="lock")
def picky_locked(numbers: list[int]) -> list[int | ItemFailed]:
    """``picky_now`` as a lock-claimed batch processing."""
    return _refuse_multiples_of_five(numbers)
