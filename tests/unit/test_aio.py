"""cancel_and_wait ends tasks that swallow a cancellation, and names those that never end."""

from __future__ import annotations

import asyncio

from squall.core.aio import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again() -> None:
    swallowed = asyncio.Event()

    async def swallows_once() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # what asyncio.wait_for does on 3.11 when the race hits
            swallowed.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(swallows_once())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task]) == set()
    assert swallowed.is_set()
    assert task.cancelled()


async def test_a_task_that_never_ends_is_answered_after_the_timeout() -> None:
    async def immortal() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(immortal())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0)
    assert await cancel_and_wait([task, finished], give_up_after=1.2) == {task}
    assert not task.done()
    task.get_coro().close()  # type: ignore[union-attr]  # let the test end without it
