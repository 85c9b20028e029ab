"""The processor service: wires the consumers and periodic steps into one ``squall processor`` process.

The processor consumes request events and polling tasks from JetStream and writes PostgreSQL. A message
is acked only after its database transaction commits, and every write is guarded so a redelivered message
never has a second effect. Each step has its own module:

* :mod:`.request_events`: recording the requests that request events carry (items of immediate
  processings computed first, in :mod:`.new_items`);
* :mod:`.poll_tasks`: claiming, computing and writing a processing's pending items;
* :mod:`.sweep`: re-publishing request events that never reached a processor;
* :mod:`.queue_depths`: exporting the consumers' queue depths;
* :mod:`.loops`: the fetch-and-handle and periodic loops these run in.

This module holds :class:`Processor`, which owns them and their lifecycle, and :func:`main`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

from nats.js import JetStreamContext

from squall.core import broker, events
from squall.core.http import start_ops_server
from squall.core.lifecycle import Resources, open_resources
from squall.core.readiness import dependency_problems
from squall.core.settings import Settings
from squall.core.store import counters
from squall.processor.loops import Activity, MessageHandler, consume, periodically
from squall.processor.poll_tasks import TASK_WORKERS, PollTaskConsumer
from squall.processor.queue_depths import QUEUE_SAMPLE_SECONDS, QueueDepthSampler
from squall.processor.request_events import (
    FETCH_BYTES,
    REQUEST_WORKERS,
    RequestEventsConsumer,
)
from squall.processor.sweep import SWEEP_INTERVAL_SECONDS, LostEventSweep

log = logging.getLogger("squall.processor")


class Processor:
    """One processor: its consumers, the sweep and the queue sampling, run until told to stop."""

    def __init__(self, settings: Settings, res: Resources) -> None:
        self.settings = settings
        self.registry = registry = res.registry
        self.engine = engine = res.engine
        # The recording's own pool, each statement planned once (db.create_engine); else ``engine``.
        self.hot_engine = res.hot_engine or engine
        self.nc = res.nc
        self.js: JetStreamContext = res.nc.jetstream()
        self.name = res.name
        self.stopping = asyncio.Event()
        self.activity = Activity()
        self.busy_since = self.activity.busy_since  # consume loop → when it started its current batch
        self.queue_sample_seconds = QUEUE_SAMPLE_SECONDS
        self.request_events = RequestEventsConsumer(registry, self.hot_engine)
        self.chunk_sizes = self.request_events.chunk_sizes
        self.poll_tasks = PollTaskConsumer(registry, engine, settings.processor)
        self.sweep = LostEventSweep(self.js, engine)
        self.queue_depths = QueueDepthSampler(self.js)

    # --- running ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work within the grace period."""
        pullers, workers = await self._start_consumers()
        sweeper = asyncio.create_task(self._sweep_forever())
        watcher = asyncio.create_task(self._watch_forever())
        log.info("processor %s consuming (processings: %s)", self.name, ", ".join(self.registry))
        await stop.wait()
        log.info("stopping: no more fetches; finishing in-flight work")
        self.stopping.set()
        sweeper.cancel()
        watcher.cancel()
        _, pending = await asyncio.wait(workers, timeout=self.settings.processor.shutdown_grace_seconds)
        for worker in pending:
            worker.cancel()  # the handler naks what it holds: handed back, redelivered to another processor
        await asyncio.gather(*workers, sweeper, watcher, return_exceptions=True)
        for puller in pullers:
            await puller.stop()

    async def _start_consumers(self) -> tuple[list[broker.Puller], list[asyncio.Task[None]]]:
        """Start the consume loops of both consumers, each with its own puller: fetches on one puller must
        not overlap."""
        pullers: list[broker.Puller] = []
        workers: list[asyncio.Task[None]] = []
        consumers: tuple[tuple[str, str, int, int, int | None, MessageHandler], ...] = (
            (
                events.REQUESTS_STREAM,
                events.REQUESTS_CONSUMER,
                REQUEST_WORKERS,
                self.settings.processor.fetch_batch,
                FETCH_BYTES,
                self.request_events.handle_requests,
            ),
            (events.TASKS_STREAM, events.TASKS_CONSUMER, TASK_WORKERS, 1, None, self.poll_tasks.handle_tasks),
        )
        for stream, consumer, count, batch, max_bytes, handle in consumers:
            for _ in range(count):
                puller = broker.Puller(self.nc, stream, consumer, max_bytes)
                await puller.start()
                pullers.append(puller)
                workers.append(
                    asyncio.create_task(consume(puller, batch, handle, self.stopping, self.activity))
                )
        return pullers, workers

    async def _sweep_forever(self) -> None:
        await periodically(
            self.stopping, SWEEP_INTERVAL_SECONDS, self.sweep.republish_lost, "sweep for lost request events"
        )

    async def _watch_forever(self) -> None:
        await periodically(
            self.stopping, self.queue_sample_seconds, self._watch_once, "sampling queues and counts", now=True
        )

    async def _watch_once(self) -> None:
        await self.queue_depths.sample_queues()
        await counters.fold_stat_deltas(self.engine)

    # --- readiness ----------------------------------------------------------------------------------------

    async def problems(self) -> list[str]:
        return await dependency_problems(self.nc, self.engine) + await self.stalls()

    async def stalls(self) -> list[str]:
        """Liveness: a batch that never ends (a lock never granted, a hung call) fails /healthz too, so the
        orchestrator restarts the process rather than let it look healthy."""
        stuck = [time.monotonic() - since for since in self.busy_since.values()]
        if stuck and max(stuck) > self.settings.processor.stall_seconds:
            return [f"stalled: a batch has been running for {max(stuck):.0f} s"]
        return []


async def main(settings: Settings, stop: asyncio.Event, stack: AsyncExitStack) -> None:
    """``squall processor``."""
    res = await open_resources(settings, "processor", stack, stop, hot_pool_size=REQUEST_WORKERS)
    longest = max((p.timeout_seconds for p in res.registry.values()), default=0.0)
    if longest >= settings.processor.stall_seconds:
        log.warning(
            "SQUALL_PROCESSOR__STALL_SECONDS (%s) is not above the longest processing timeout (%s): a long "
            "batch would be reported as stalled",
            settings.processor.stall_seconds,
            longest,
        )
    processor = Processor(settings, res)
    ops = start_ops_server(
        settings.processor.http_port, processor.problems, settings.processor.http_host, processor.stalls
    )
    stack.callback(ops.stop)
    await processor.run(stop)
