"""Admission control: a submission waits while the backlog is over its limit, then is refused (503).

The backlog is every item accepted and not processed yet: in requests no processor has recorded (events
waiting in JetStream) and recorded items still pending. It is read from the gateway's stats cache (one
count query a second per gateway, however many submissions wait), so the limit is soft: it may be passed
by what is accepted within a second, and by the submissions released together when room appears.

Holding a submission rather than refusing it at once slows a closed-loop client down to the rate the
processors keep up with; refusing after a bounded wait tells an open-loop one to back off (Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from squall.core import metrics
from squall.core.http import ApiError
from squall.core.logs import error_text
from squall.core.rules import RETRY_AFTER_OVERLOADED_SECONDS

log = logging.getLogger("squall.gateway")

# How often a held submission looks at the backlog again (the count itself is at most a second old).
RECHECK_SECONDS = 0.25


class Admission:
    def __init__(
        self, backlog: Callable[[], Awaitable[int]], max_backlog_items: int, wait_seconds: float
    ) -> None:
        self._backlog = backlog
        self.limit = max_backlog_items  # 0: no limit
        self.wait_seconds = wait_seconds
        metrics.BACKLOG_LIMIT.set(max_backlog_items)

    async def admit(self) -> None:
        """Return when the backlog is under the limit; ApiError 503 if it stays over it for the wait."""
        if not self.limit:
            return
        backlog = await self._read()
        if backlog < self.limit:
            return
        deadline = time.monotonic() + self.wait_seconds
        while backlog >= self.limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                metrics.ADMISSION_HELD.labels("refused").inc()
                raise ApiError(
                    503,
                    "overloaded",
                    f"{backlog} items wait to be processed, over the limit of {self.limit}; retry later",
                    None,
                    {"Retry-After": str(RETRY_AFTER_OVERLOADED_SECONDS)},
                )
            await asyncio.sleep(min(RECHECK_SECONDS, remaining))
            backlog = await self._read()
        metrics.ADMISSION_HELD.labels("admitted").inc()

    async def _read(self) -> int:
        try:
            return await self._backlog()
        except Exception as exc:  # the database is unreachable: intake itself answers 503 for that
            log.debug("backlog not read: %s", error_text(exc))
            return 0
