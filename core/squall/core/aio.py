"""asyncio helpers the services share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How long one cancellation is given before it is sent again.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], give_up_after: float | None = None
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait until they end, cancelling again those still running every half second.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for`` drops a cancellation that lands as
    its inner call completes (fixed in 3.12), and a loop around it, such as nats-py's connect retries, then
    just goes on. Answers the tasks still running after ``give_up_after`` seconds (none without it).
    """
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    while pending:
        for task in pending:
            task.cancel()
        wait = RECANCEL_SECONDS if deadline is None else min(RECANCEL_SECONDS, deadline - loop.time())
        if wait <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=wait)
    return pending
