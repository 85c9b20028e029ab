"""Group commit: concurrent callers share writes, each gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from squall.gateway.batching import Coalescer


class Recorder:
    """A write that answers each value doubled (or the error for a negative one) and remembers its batches.

    ``delay``: each write takes that long. ``gated``: each write is held until ``release`` is set, and
    ``entered`` is set once one is in flight (the test decides when a write ends, not a clock)."""

    def __init__(self, delay: float = 0.0, gated: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.gated = gated
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, values: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(values))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.entered.set()
        try:
            await asyncio.sleep(self.delay)
            if self.gated:
                await self.release.wait()
        finally:
            self.in_flight -= 1
        return [ValueError(f"bad {v}") if v < 0 else 2 * v for v in values]


async def test_concurrent_callers_share_one_write_and_get_their_own_answers() -> None:
    write = Recorder()
    coalescer = Coalescer(write, max_batch=100)
    answers = await asyncio.gather(*(coalescer.submit(v) for v in range(10)))
    assert answers == [2 * v for v in range(10)]
    assert write.batches == [list(range(10))]


async def test_an_idle_coalescer_writes_a_lone_caller_at_once() -> None:
    write = Recorder()
    coalescer = Coalescer(write, max_batch=100)
    assert await coalescer.submit(1) == 2
    assert await coalescer.submit(2) == 4
    assert write.batches == [[1], [2]]


async def test_callers_arriving_during_a_write_go_into_the_next_one() -> None:
    write = Recorder(gated=True)
    coalescer = Coalescer(write, max_batch=100)
    first = asyncio.ensure_future(coalescer.submit(0))
    await asyncio.wait_for(write.entered.wait(), timeout=5)  # the first write is in flight
    later = asyncio.gather(*(coalescer.submit(v) for v in range(1, 6)))
    # The later callers' first steps were scheduled before the write's wake-up: they queue while it is held.
    write.release.set()
    assert await first == 0
    assert await later == [2, 4, 6, 8, 10]
    assert write.batches == [[0], [1, 2, 3, 4, 5]]


async def test_batches_are_bounded_and_so_are_writes_in_flight() -> None:
    write = Recorder(delay=0.01)
    coalescer = Coalescer(write, max_batch=4, concurrency=2)
    answers = await asyncio.gather(*(coalescer.submit(v) for v in range(21)))
    assert answers == [2 * v for v in range(21)]
    assert max(len(b) for b in write.batches) == 4
    assert sorted(v for b in write.batches for v in b) == list(range(21))
    assert write.most_in_flight == 2


async def test_an_answer_that_is_an_error_fails_only_its_caller() -> None:
    coalescer = Coalescer(Recorder(), max_batch=100)
    answers = await asyncio.gather(*(coalescer.submit(v) for v in (1, -1, 3)), return_exceptions=True)
    assert answers[0] == 2 and answers[2] == 6
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "bad -1"


async def test_a_failed_write_fails_its_callers_and_the_next_write_runs() -> None:
    calls = 0

    async def flaky(values: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return list(values)

    coalescer = Coalescer(flaky, max_batch=100)
    failed = await asyncio.gather(*(coalescer.submit(v) for v in range(3)), return_exceptions=True)
    assert all(isinstance(f, ConnectionError) for f in failed)
    assert await coalescer.submit(7) == 7


async def test_a_caller_that_gives_up_does_not_cancel_the_others_write() -> None:
    write = Recorder(gated=True)
    coalescer = Coalescer(write, max_batch=100)
    quitter = asyncio.ensure_future(coalescer.submit(1))
    stayer = asyncio.ensure_future(coalescer.submit(2))
    await asyncio.wait_for(write.entered.wait(), timeout=5)  # the write holding both is in flight
    quitter.cancel()
    write.release.set()
    assert await stayer == 4
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert write.batches == [[1, 2]]


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_value_submitted_as_the_last_writers_finish_is_written(concurrency: int) -> None:
    """A submission whose first step runs after every writer's last look at the queue but before the writer
    tasks' done callbacks (another request read in the same loop iteration, in the gateway) once waited for
    the next submission to start a writer: under a closed-loop load, until its client gave up."""
    late: asyncio.Future[str] | None = None

    async def write_many(batch: Sequence[str]) -> list[str]:
        nonlocal late
        await asyncio.sleep(0)
        if late is None:  # its first step is queued now: it runs after the writers return
            late = asyncio.ensure_future(coalescer.submit("late"))
        return [value.upper() for value in batch]

    # One value per batch: each writer holds one, so all of them are busy when the late value comes.
    coalescer: Coalescer[str, str] = Coalescer(write_many, max_batch=1, concurrency=concurrency)
    first = [f"v{n}" for n in range(concurrency)]
    assert await asyncio.gather(*(coalescer.submit(v) for v in first)) == [v.upper() for v in first]
    assert late is not None
    assert await asyncio.wait_for(late, timeout=5) == "LATE"
