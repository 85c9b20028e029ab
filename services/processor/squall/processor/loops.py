"""The loops a processor runs: one puller's fetch-and-handle loop, and a step repeated on a period.

Both end on the processor's stopping event, which the wiring (:mod:`.worker`) sets at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from squall.core import broker, metrics
from squall.core.logs import error_text

log = logging.getLogger("squall.processor")

FETCH_WAIT_SECONDS = 1.0

MessageHandler = Callable[[list[Msg]], Awaitable[None]]


class Activity:
    """What the consume loops are doing now: the messages they hold (exported as a gauge), and when each
    loop started its current batch (a batch that never ends fails the liveness check)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.busy_since: dict[int, float] = {}  # consume loop → when it started its current batch

    def started(self, loop: int, msgs: list[Msg]) -> None:
        self.in_flight += len(msgs)
        metrics.IN_FLIGHT.set(self.in_flight)
        self.busy_since[loop] = time.monotonic()

    def finished(self, loop: int, msgs: list[Msg]) -> None:
        self.in_flight -= len(msgs)
        metrics.IN_FLIGHT.set(self.in_flight)
        del self.busy_since[loop]


async def consume(
    puller: broker.Puller,
    batch: int,
    handle: MessageHandler,
    stopping: asyncio.Event,
    activity: Activity,
) -> None:
    """Fetch up to ``batch`` messages at a time and ``handle`` them until ``stopping`` is set. Messages
    a handler could not finish are handed back (nak) to be redelivered."""
    while not stopping.is_set():
        try:
            msgs = await puller.fetch(batch, FETCH_WAIT_SECONDS)
        except TimeoutError:
            continue  # nothing to fetch
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection trouble: back off, the client reconnects
            log.warning("fetch failed: %r", exc)
            await asyncio.sleep(0.5)
            continue
        activity.started(id(puller), msgs)
        try:
            await handle(msgs)
        except asyncio.CancelledError:
            await nak_all(msgs)
            raise
        except Exception:
            # Database down or a bug: leave the messages to be redelivered after a short delay.
            log.exception("handling %d message(s) failed; they will be redelivered", len(msgs))
            await nak_all(msgs, delay=1.0)
        finally:
            activity.finished(id(puller), msgs)


async def nak_all(msgs: list[Msg], delay: float | None = None) -> None:
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak(delay=delay)


async def periodically(
    stopping: asyncio.Event,
    seconds: float,
    step: Callable[[], Awaitable[object]],
    what: str,
    *,
    now: bool = False,
) -> None:
    """Run ``step`` every ``seconds`` (first right away if ``now``) until ``stopping`` is set; a failing
    step is logged and tried again next time. The loop ends on the stopping event, not on cancellation
    alone: a library call may swallow a cancellation (asyncio.wait_for does in Python 3.11), and a loop
    that then sleeps again would hold shutdown."""
    wait = not now
    while not stopping.is_set():
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)
            if stopping.is_set():
                return
        wait = True
        try:
            await step()
        except Exception as exc:
            log.warning("%s failed: %s", what, error_text(exc))
