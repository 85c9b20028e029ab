"""Runs one service: SIGTERM/SIGINT become an event; an AsyncExitStack owns every resource.

Shutdown order is the service's own: it stops intake, finishes or hands back in-flight work, and the exit
stack then drains NATS and disposes of the database engine (the reverse of how they were opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from nats.aio.client import Client
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core import broker, migrate, otel
from squall.core.aio import cancel_and_wait
from squall.core.db import create_engine
from squall.core.logs import configure_logging
from squall.core.processings import Registry, load_registry
from squall.core.settings import Settings

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A service cannot start for a reason its message states (a bad tokens file, say): logged as one line,
    exit code 1, no traceback."""


SCHEMA_CHECK_RETRY_SECONDS = 1.0

# How long the tasks left at exit get to end once cancelled.
LEFTOVER_TASKS_SECONDS = 10.0

ServiceMain = Callable[[Settings, asyncio.Event, AsyncExitStack], Awaitable[None]]


@dataclass(frozen=True)
class Resources:
    """What every service opens at start, owned by the service's exit stack."""

    name: str
    registry: Registry
    engine: AsyncEngine
    nc: Client
    hot_engine: AsyncEngine | None = None  # the hot statements' own pool (db.create_engine), if asked for


async def open_resources(
    settings: Settings,
    service: str,
    stack: AsyncExitStack,
    stop: asyncio.Event,
    pool_size: int | None = None,
    hot_pool_size: int = 0,
) -> Resources:
    """Load the processings, open the database pool (and, with ``hot_pool_size``, the hot statements' pool)
    and the NATS connection, and make sure the streams exist. On exit the stack drains NATS, then disposes
    of the pools. ``stop`` ends the wait for NATS."""
    registry = load_registry(settings)
    name = instance_id(settings, service)
    engine = create_engine(settings, pool_size=pool_size)
    stack.push_async_callback(engine.dispose)
    await check_schema(engine, stop)
    hot_engine = None
    if hot_pool_size:
        hot_engine = create_engine(settings, pool_size=hot_pool_size, hot_statements=True)
        stack.push_async_callback(hot_engine.dispose)
    nc = await broker.connect(settings, name, stop)
    stack.push_async_callback(nc.drain)
    await broker.ensure_streams_when_ready(nc.jetstream(), settings, stop)
    return Resources(name, registry, engine, nc, hot_engine)


async def check_schema(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Refuse to run against a database this code does not fit (not migrated yet, or migrated by a release
    whose schema no longer keeps this one working); start against one a rolling upgrade has migrated ahead.
    Waits for the database like the NATS connection does, until ``stop``."""
    while True:
        try:
            async with engine.connect() as conn:
                state = await migrate.schema_state(conn)
            break
        except (OSError, TimeoutError, DBAPIError) as exc:
            reason = (str(exc).splitlines() or [""])[0][:200]
            log.warning(
                "database not reachable to check its schema, retrying: %s %s", type(exc).__name__, reason
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SCHEMA_CHECK_RETRY_SECONDS)
        if stop.is_set():
            raise broker.StoppedWhileConnecting("stopped before the database answered")
    if not state.verdict.runnable:
        raise StartupError(state.describe())
    if state.verdict is migrate.Verdict.AHEAD:
        log.warning("%s", state.describe())


def instance_id(settings: Settings, service: str) -> str:
    return settings.instance_id or f"{service}-{socket.gethostname()}-{os.getpid()}"


async def _run(service: str, settings: Settings, main: ServiceMain) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s running on %s's event loop", service, type(loop).__module__.partition(".")[0])
    try:
        async with AsyncExitStack() as stack:
            await main(settings, stop, stack)
    finally:
        await _end_leftover_tasks(service)
    log.info("%s stopped", service)


async def _end_leftover_tasks(service: str) -> None:
    """End what the service's resources left running (a library's reconnect loop, say).

    The runner cancels leftovers once and then waits for them forever; one that swallowed its cancellation
    would keep the process alive after SIGTERM. Cancelled again here, within a bound; past it, the process
    names them and exits hard, as Kubernetes would SIGKILL it anyway.
    """
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    stuck = await cancel_and_wait(leftovers, give_up_after=LEFTOVER_TASKS_SECONDS)
    if stuck:
        log.error("%s: %d task(s) ignored cancellation, exiting now: %s", service, len(stuck), stuck)
        logging.shutdown()
        os._exit(1)


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless asyncio's is asked for (or uvloop is not installed: None is asyncio's)."""
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed: running on asyncio's event loop")
        else:
            return uvloop.new_event_loop
    return None


def run_service(service: str, settings: Settings, main: ServiceMain) -> None:
    configure_logging(service, settings.log_format, settings.log_level)
    # Before the loop starts: a missing `otel` extra stops the process here with a clear message.
    stop_export = otel.setup(settings.otel, service, instance_id(settings, service))
    # A request allocates thousands of short-lived objects: with the default threshold (700) the cyclic
    # collector ran thousands of times a second. What start-up built lives as long as the process, so it
    # is moved out of the collector's scans.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        with (
            contextlib.suppress(KeyboardInterrupt),
            asyncio.Runner(loop_factory=loop_factory(settings)) as runner,
        ):
            runner.run(_run(service, settings, main))
    except broker.StoppedWhileConnecting as exc:
        log.info("%s %s", service, exc)
    except (broker.NatsUnavailable, StartupError) as exc:  # one clear line, not a traceback
        log.error("%s: %s", service, exc)
        raise SystemExit(1) from None
    finally:
        stop_export()  # flushes the spans still queued (the services' resources are closed by now)
