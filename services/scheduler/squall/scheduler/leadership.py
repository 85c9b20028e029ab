"""Leadership among the scheduler replicas: the lease they compete for, and each one's heartbeat.

Leadership is a lease row in PostgreSQL (``scheduler_leader``) renewed every second with a 3-second time to
live, and an epoch that grows whenever it changes hands. A leader killed without warning is replaced when
its lease lapses (within ``lease_seconds`` + one renewal period). Every replica also keeps its row in
``scheduler_instances`` fresh, for the ``/v1/schedulers`` view.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import metrics
from squall.core.logs import error_text
from squall.core.store import scheduling

log = logging.getLogger("squall.scheduler")

RENEW_SECONDS = 1.0


class Leadership:
    """This replica's hold on the lease: renewed until told to stop, then handed over."""

    def __init__(
        self,
        engine: AsyncEngine,
        replica: str,
        lease_seconds: float,
        on_gaining: Callable[[], Awaitable[None]],
    ) -> None:
        self.engine = engine
        self.replica = replica
        self.lease_seconds = lease_seconds
        self.on_gaining = on_gaining  # runs before ``leading`` turns true, so no duty runs ahead of it
        self.host = socket.gethostname()
        self.started_at = dt.datetime.now(dt.UTC)
        self.epoch: int | None = None  # set while this replica leads
        self._watchers: list[asyncio.Event] = []

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def watch(self) -> asyncio.Event:
        """An event set whenever leadership (or its epoch) changes; the watcher clears it."""
        event = asyncio.Event()
        self._watchers.append(event)
        return event

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew the lease (or try to take it) every second until ``stop`` is set."""
        while not stop.is_set():
            await self.renew()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RENEW_SECONDS)

    async def renew(self) -> None:
        try:
            await scheduling.heartbeat_instance(self.engine, self.replica, self.host, self.started_at)
            epoch = await scheduling.renew_leadership(self.engine, self.replica, self.lease_seconds)
        except Exception as exc:
            # Without the database this replica cannot know it still leads: it stops leading.
            log.warning("lease renewal failed: %s", error_text(exc))
            epoch = None
        if epoch != self.epoch:
            if epoch is not None:
                log.info("leading (epoch %d)", epoch)
                await self.on_gaining()
            elif self.epoch is not None:
                log.warning("no longer leading")
            self.epoch = epoch
            for event in self._watchers:
                event.set()
        metrics.SCHEDULER_IS_LEADER.set(1 if self.leading else 0)

    async def release(self) -> None:
        """On shutdown: resign the lease if held and leave the instances list."""
        if self.leading:
            # Hand over at once rather than make the others wait for the lease to lapse.
            with contextlib.suppress(Exception):
                await scheduling.resign_leadership(self.engine, self.replica)
        with contextlib.suppress(Exception):
            await scheduling.leave_instances(self.engine, self.replica)
        metrics.SCHEDULER_IS_LEADER.set(0)
