"""Group commit: concurrent callers' writes share one statement.

A round trip to PostgreSQL costs the same for one row as for a hundred, and on a busy machine each one is
a context switch for both sides. :class:`Coalescer` lets every caller ``await submit(x)`` as if it wrote
alone, while at most ``concurrency`` writes are in flight and the callers that arrive meanwhile are
written together by the next one. An idle system writes at once (no timer, no added latency); a busy one
writes in batches that grow with the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

# What the write answers per input: its result, or the exception for that input alone.
WriteMany = Callable[[Sequence[In]], Awaitable[Sequence[Out | BaseException]]]


class Coalescer(Generic[In, Out]):
    def __init__(self, write_many: WriteMany[In, Out], *, max_batch: int, concurrency: int = 1) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._writers: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones
        # Writers that may still take what waits. Counted down by the writer itself, in the same step as its
        # last look at the queue: a task's done callbacks run a step later, and a value submitted between
        # the two found the writer still "running" and waited for the next submission to start one.
        self._running = 0

    async def submit(self, value: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((value, future))
        if self._running < self._concurrency:
            self._running += 1
            writer = asyncio.create_task(self._write_while_waiting())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        # Shielded: a caller that gives up does not take the others' write down with it.
        return await asyncio.shield(future)

    async def _write_while_waiting(self) -> None:
        try:
            await self._write_batches()
        finally:
            self._running -= 1

    async def _write_batches(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                answers = await self._write_many([value for value, _ in batch])
            # The whole write failed (the database is down): every caller of the batch sees it.
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
