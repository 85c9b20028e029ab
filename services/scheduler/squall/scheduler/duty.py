"""The shape of a leader duty, and the one runner that runs every duty the same way.

A duty is a piece of periodic work only the leader does (firing ticks, checking dependencies, …). Each
lives in its own module under :mod:`squall.scheduler.duties` and is listed once, in
:mod:`squall.scheduler.service`. The runner gives each duty a task of its own for as long as the replica
runs; the duty does its work only while this replica leads, is woken whenever leadership changes hands
(so a new leader starts every duty at once), and its failures are logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from squall.core.logs import error_text
from squall.scheduler.leadership import Leadership

log = logging.getLogger("squall.scheduler")


class Duty(Protocol):
    """Periodic work of the leader."""

    name: str
    """What the duty does, as a log line puts it: "<name> failed: …"."""

    every_seconds: float
    """How long to wait after a run, a failed one included, before the next."""

    async def run_once(self) -> float | None:
        """Do the work once; answers how long to wait before the next run, or None for ``every_seconds``."""
        ...


class DutyRunner:
    """Runs each duty in a task of its own, while this replica leads."""

    def __init__(self, leadership: Leadership, duties: Sequence[Duty]) -> None:
        self.leadership = leadership
        self.duties = tuple(duties)
        self.failures: collections.Counter[str] = collections.Counter()  # by duty name
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep_running(duty, self.leadership.watch()), name=duty.name)
            for duty in self.duties
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _keep_running(self, duty: Duty, leadership_changed: asyncio.Event) -> None:
        # A run in progress when leadership is lost is let finish rather than cancelled: whatever it
        # writes on the leader's behalf checks the epoch in its own transaction.
        while True:
            leadership_changed.clear()
            wait = duty.every_seconds
            if self.leadership.leading:
                try:
                    asked = await duty.run_once()
                except Exception as exc:
                    self.failures[duty.name] += 1
                    log.warning("%s failed: %s", duty.name, error_text(exc))
                else:
                    wait = duty.every_seconds if asked is None else asked
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leadership_changed.wait(), max(0.0, wait))
