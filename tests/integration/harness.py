"""Helpers of the integration tests: settings for tests, waiting, and a system run in the test's loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import nats
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.cli.embedded import free_port
from squall.core import broker, events, tracing
from squall.core.db import create_engine
from squall.core.lifecycle import Resources
from squall.core.processings import Registry, load_registry
from squall.core.settings import Settings, load_settings
from squall.core.store import scheduling
from squall.gateway.app import GatewayApp
from squall.gateway.server import make_server
from squall.processor.worker import Processor
from squall.scheduler.service import Scheduler

T = TypeVar("T")


class LogRecords(logging.Handler):
    """Every record of the squall loggers, after the context filter the services use (the ``records``
    fixture installs one)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(tracing.ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def find(self, message: str, **fields: Any) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if r.getMessage() == message and all(r.__dict__.get(k) == v for k, v in fields.items())
        ]


def plain_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def make_settings(nats_url: str, database_url: str, **overrides: Any) -> Settings:
    """Settings tuned for tests: short leases and redelivery so crash recovery happens in seconds."""
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "log_format": "text",
        "database_pool_size": 5,
        "processor": {
            "ack_wait_seconds": 3.0,
            "lease_seconds": 3.0,
            "shutdown_grace_seconds": 5.0,
            "http_port": 0,
        },
        "scheduler": {"default_interval_seconds": 0.2, "http_port": 0},
        "gateway": {"port": 0, "host": "127.0.0.1"},
        "nats": {"connect_retry_seconds": 5.0},
        "auth": {"required": False},  # tests/integration/test_auth.py covers the default (required)
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(**base)


async def wait_for(
    check: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``check`` until it answers something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last answer: {last!r}")


@dataclass
class RunningProcessor:
    processor: Processor
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class System:
    """A gateway and processors running in this test's event loop against real servers."""

    settings: Settings
    registry: Registry
    engine: AsyncEngine
    base_url: str
    client: httpx.AsyncClient
    stack: AsyncExitStack
    app: GatewayApp
    hot_engine: AsyncEngine
    processors: list[RunningProcessor] = field(default_factory=list)

    async def start_processor(self, name: str | None = None) -> Processor:
        name = name or f"processor-{len(self.processors)}"
        nc = await broker.connect(self.settings, name)
        processor = Processor(self.settings, Resources(name, self.registry, self.engine, nc, self.hot_engine))
        stop = asyncio.Event()
        self.processors.append(RunningProcessor(processor, stop, asyncio.create_task(processor.run(stop))))
        return processor

    async def stop_processors(self) -> None:
        """Graceful stop (as on SIGTERM), then close their connections."""
        for running in self.processors:
            running.stop.set()
        await asyncio.gather(*(running.task for running in self.processors))
        for running in self.processors:
            await running.processor.nc.close()
        self.processors.clear()

    async def stop_processors_once_recorded(self, items: int) -> None:
        """Wait until ``items`` items are recorded, then stop the in-process processors: the items stay
        pending for whatever runs their poll tasks next (OS processes, a scheduler, the test itself)."""

        async def recorded() -> bool:
            return await self.recorded_items() == items

        await wait_for(recorded, what=f"{items} items recorded")
        await self.stop_processors()

    async def recorded_items(self) -> int:
        """Items recorded by processors, whichever table holds them."""
        return int(await self.fetchval("SELECT count(*) FROM all_items"))

    async def start_scheduler(self, name: str = "scheduler-0") -> Scheduler:
        """A scheduler replica in this loop; it leads if no other does."""
        nc = await broker.connect(self.settings, name)
        self.stack.push_async_callback(nc.close)
        scheduler = Scheduler(self.settings, self.registry, self.engine, nc, name)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))

        async def halt() -> None:
            stop.set()
            await task

        self.stack.push_async_callback(halt)
        return scheduler

    async def publish_poll(self, processing: str, batch_size: int, tick_key: str | None = None) -> uuid.UUID:
        """Publish one poll task the way the scheduler does (recorded first, then published)."""
        key = tick_key or uuid.uuid4().hex
        task = events.PollTask(
            task_id=events.poll_task_id(processing, key),
            processing=processing,
            batch_size=batch_size,
            tick_key=key,
        )
        async with self.engine.begin() as conn:
            await scheduling.record_poll_tasks(conn, [(task.task_id, processing, batch_size)])
        nc = await nats.connect(self.settings.nats_url)
        try:
            await nc.jetstream().publish(
                events.poll_subject(processing),
                task.model_dump_json().encode(),
                headers={"Nats-Msg-Id": task.msg_id},
            )
        finally:
            await nc.close()
        return task.task_id

    async def submit(self, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        response = await self.client.post("/v1/requests", json=body)
        assert response.status_code == expect, response.text
        return response.json()  # type: ignore[no-any-return]

    async def request_state(self, rid: str | int) -> dict[str, Any]:
        response = await self.client.get(f"/v1/requests/{rid}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_processed(self, rid: str | int, timeout: float = 20.0) -> dict[str, Any]:
        async def processed() -> dict[str, Any] | None:
            state = await self.request_state(rid)
            return state if state["processed"] else None

        return await wait_for(processed, timeout, what=f"request {rid} processed")

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(plain_dsn(self.settings.database_url))
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(plain_dsn(self.settings.database_url))
        try:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            await conn.close()


async def start_system(settings: Settings, stack: AsyncExitStack, processors: int = 1) -> System:
    registry = load_registry(settings)
    engine = create_engine(settings)
    stack.push_async_callback(engine.dispose)
    # The hot statements' pool, as the services open it (each statement planned once), shared here.
    hot_engine = create_engine(settings, hot_statements=True)
    stack.push_async_callback(hot_engine.dispose)
    nc = await broker.connect(settings, "test-gateway")
    stack.push_async_callback(nc.close)
    await broker.ensure_streams(nc.jetstream(), settings)
    app = GatewayApp(settings, Resources("test-gateway", registry, engine, nc, hot_engine))
    server = make_server(app, settings.gateway)
    port = free_port()
    server.listen(port, "127.0.0.1")
    stack.callback(server.stop)
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=base_url, timeout=30.0)
    stack.push_async_callback(client.aclose)
    system = System(settings, registry, engine, base_url, client, stack, app, hot_engine)
    stack.push_async_callback(system.stop_processors)
    for index in range(processors):
        await system.start_processor(f"processor-{index}")
    return system


ROOT = Path(__file__).resolve().parents[2]


class SteadyLoad:
    """HTTP clients submitting requests with their own rids, each retried (same rid) until accepted: the
    way a careful client behaves during an outage. ``accepted`` is what the gateway promised to process."""

    def __init__(self, base_url: str, jobs: Sequence[str], items: int, pause: float = 0.01) -> None:
        self.base_url = base_url
        self.jobs = list(jobs)
        self.items = items
        self.pause = pause
        self.accepted: dict[str, tuple[str, list[int]]] = {}  # rid -> (job, numbers)
        self.refusals = 0
        self.running = True

    async def client(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as http:
            sequence = 0
            while self.running:
                rid = f"c{index}-{sequence}"
                job = self.jobs[sequence % len(self.jobs)]
                numbers = [(index * 1_000_000 + sequence) * 100 + i for i in range(self.items)]
                body = {"rid": rid, "items": [{"number": n, "job": job} for n in numbers]}
                while True:
                    try:
                        response = await http.post("/v1/requests", json=body)
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code in (200, 202):
                        self.accepted[rid] = (job, numbers)
                        break
                    assert response is None or response.status_code == 503, response.text
                    self.refusals += 1
                    await asyncio.sleep(0.2)
                sequence += 1
                await asyncio.sleep(self.pause)


class ServiceProcesses:
    """``squall <role>`` as real OS processes (what a container runs), by instance name."""

    def __init__(self, settings: Settings, log_dir: Path, **env: str) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.env = env
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def running(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.by_name.values() if p.poll() is None]

    def start(self, role: str, name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")},
            "PYTHONPATH": str(ROOT),
            "SQUALL_NATS_URL": self.settings.nats_url,
            "SQUALL_DATABASE_URL": self.settings.database_url,
            "SQUALL_PROCESSOR__HTTP_PORT": "0",
            "SQUALL_SCHEDULER__HTTP_PORT": "0",
            "SQUALL_INSTANCE_ID": name,
            "SQUALL_LOG_FORMAT": "text",
            **self.env,
            **extra_env,
        }
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "squall.cli", role], env=env, stdout=out, stderr=out
            )
        self.by_name[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies or the OOM killer strikes."""
        self.by_name[name].send_signal(signal.SIGKILL)
        self.by_name[name].wait()

    def stop_all(self) -> None:
        for process in self.running:
            process.send_signal(signal.SIGTERM)
        for process in self.by_name.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class ProcessorProcesses(ServiceProcesses):
    """``squall processor`` processes running the test processings, which log their effects to a file."""

    def __init__(self, settings: Settings, effect_log: Path, log_dir: Path) -> None:
        super().__init__(
            settings,
            log_dir,
            SQUALL_PROCESSING_MODULES="tests.integration.effect_processings",
            SQUALL_PROCESSOR__ACK_WAIT_SECONDS="2",
            SQUALL_PROCESSOR__LEASE_SECONDS="2",
            SQUALL_TEST_EFFECT_LOG=str(effect_log),
        )

    def start(self, name: str, **extra_env: str) -> subprocess.Popen[bytes]:  # type: ignore[override]
        return super().start("processor", name, **extra_env)


def squall_cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``squall`` command against the test database (``env``: more SQUALL_* settings)."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")},
        "PYTHONPATH": str(ROOT),
        "SQUALL_DATABASE_URL": settings.database_url,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "squall.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
