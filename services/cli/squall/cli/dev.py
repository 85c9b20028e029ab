"""``squall dev``: the whole system on one machine, with one command.

Starts an embedded NATS JetStream and PostgreSQL (unless ``SQUALL_NATS_URL`` / ``SQUALL_DATABASE_URL`` are
given), applies migrations, runs the gateway, processors and scheduler as child processes with their logs
prefixed, restarts a child that dies, writes its process table to a state file, and on Ctrl-C or SIGTERM
stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from squall.cli.embedded import NatsServer, PostgresServer, die_with_parent, free_port
from squall.core import migrate
from squall.core.logs import configure_logging
from squall.core.settings import load_settings
from squall.core.targets import redact_url

log = logging.getLogger("squall.dev")

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
STOP_GRACE_SECONDS = 25.0


@dataclass
class Child:
    service: str
    name: str
    argv: list[str]
    env: dict[str, str]
    http_port: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class DevOptions:
    port: int = 8888
    processors: int = 2
    gateways: int = 1
    schedulers: int = 1
    data_dir: Path = Path(".squall")
    state_file: Path | None = None
    host: str = "127.0.0.1"


class Supervisor:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.children: list[Child] = []
        self.servers: list[NatsServer | PostgresServer] = []
        self.stopping = False
        self.state_file = options.state_file or options.data_dir / "dev.json"

    # --- embedded servers ---------------------------------------------------------------------------------

    def start_servers(self) -> dict[str, str]:
        env: dict[str, str] = {}
        data = self.options.data_dir.resolve()
        if not os.environ.get("SQUALL_NATS_URL"):
            nats_server = NatsServer(data / "nats")
            nats_server.start()
            self.servers.append(nats_server)
            env["SQUALL_NATS_URL"] = nats_server.url
            log.info("embedded NATS JetStream on %s (data in %s)", nats_server.url, nats_server.data_dir)
        if not os.environ.get("SQUALL_DATABASE_URL"):
            postgres = PostgresServer(data / "postgres")
            postgres.start()
            self.servers.append(postgres)
            env["SQUALL_DATABASE_URL"] = postgres.url
            log.info("embedded PostgreSQL on %s (data in %s)", postgres.url, postgres.data_dir)
        return env

    def stop_servers(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()

    # --- children -----------------------------------------------------------------------------------------

    def plan(self, base_env: dict[str, str]) -> None:
        common = {
            **os.environ,
            **base_env,
            "SQUALL_LOG_FORMAT": os.environ.get("SQUALL_LOG_FORMAT", "text"),
            # Open by default on a laptop; SQUALL_AUTH__REQUIRED=true tries the production behaviour.
            "SQUALL_AUTH__REQUIRED": os.environ.get("SQUALL_AUTH__REQUIRED", "false"),
        }
        role = [sys.executable, "-m", "squall.cli"]
        gateways = self.options.gateways
        for index in range(1, gateways + 1):
            name = "gateway" if gateways == 1 else f"gateway-{index}"
            self.children.append(
                Child(
                    "gateway",
                    name,
                    [*role, "gateway"],
                    {
                        **common,
                        "SQUALL_GATEWAY__PORT": str(self.options.port),
                        "SQUALL_GATEWAY__HOST": self.options.host,
                        # Several gateways share the port: the kernel spreads connections over them.
                        "SQUALL_GATEWAY__REUSE_PORT": "true" if gateways > 1 else "false",
                        "SQUALL_INSTANCE_ID": name,
                    },
                    self.options.port,
                )
            )
        # Processors, then schedulers: each on a free port of its own (SQUALL_<SERVICE>__HTTP_PORT).
        instances = {"processor": self.options.processors, "scheduler": self.options.schedulers}
        for service, count in instances.items():
            for index in range(1, count + 1):
                port = free_port()
                name = f"{service}-{index}"
                self.children.append(
                    Child(
                        service,
                        name,
                        [*role, service],
                        {
                            **common,
                            f"SQUALL_{service.upper()}__HTTP_PORT": str(port),
                            f"SQUALL_{service.upper()}__HTTP_HOST": self.options.host,
                            "SQUALL_INSTANCE_ID": name,
                        },
                        port,
                    )
                )

    async def spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            preexec_fn=die_with_parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        child.started_at = time.monotonic()
        child.pump = asyncio.create_task(self._pump(child, child.process))
        self.write_state()

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        """Copy a child's output to ours, each line prefixed with the child's name."""
        assert process.stdout is not None
        prefix = f"{child.name:<12}| ".encode()
        async for line in process.stdout:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()

    async def watch(self, child: Child) -> None:
        """Restart the child whenever it dies, with a growing back-off while it keeps dying quickly."""
        while not self.stopping:
            assert child.process is not None
            code = await child.process.wait()
            if child.pump is not None:
                await child.pump
            if self.stopping:
                return
            lived = time.monotonic() - child.started_at
            if lived > 30:
                child.restarts = 0
            delay = RESTART_BACKOFF_SECONDS[min(child.restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
            child.restarts += 1
            log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)
            await asyncio.sleep(delay)
            if not self.stopping:
                await self.spawn(child)

    async def stop_children(self) -> None:
        self.stopping = True
        running = [c for c in self.children if c.process and c.process.returncode is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%s did not stop in time; killing it", child.name)
                child.process.kill()
                await child.process.wait()

    # --- state file ---------------------------------------------------------------------------------------

    def write_state(self) -> None:
        processes: list[dict[str, object]] = []
        for server in self.servers:
            ports: dict[str, int] = {"client": server.port}
            if isinstance(server, NatsServer):
                ports["http"] = server.monitor_port
            processes.append({"service": server.name, "pid": server.pid, "ports": ports})
        for child in self.children:
            if child.process is not None:
                processes.append(
                    {
                        "service": child.service,
                        "name": child.name,
                        "pid": child.process.pid,
                        "ports": {"http": child.http_port},
                    }
                )
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": processes}, indent=2))
        tmp.replace(self.state_file)

    # --- all of it ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            # In this (the main) thread: the servers' parent-death signal is tied to the thread that forks.
            base_env = self.start_servers()
            settings = load_settings(**_settings_from(base_env))
            log.info("applying migrations to %s", redact_url(settings.database_url))
            await migrate.upgrade_async(settings)
            self.plan(base_env)
            for child in self.children:
                await self.spawn(child)
            watchers = [asyncio.create_task(self.watch(c)) for c in self.children]
            url = f"http://{self.options.host}:{self.options.port}"
            access = (
                "tokens required: make one with `squall tokens create NAME --scope admin`"
                if settings.auth.required and "SQUALL_AUTH__REQUIRED" in os.environ
                else "OPEN: no authentication in dev"
            )
            log.info(
                "Squall is running at %s (%s) — try: curl -s %s/readyz; state in %s; Ctrl-C stops everything",
                url,
                access,
                url,
                self.state_file,
            )
            await stop.wait()
            log.info("stopping")
            await self.stop_children()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            self.stopping = True
            await asyncio.to_thread(self.stop_servers)
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()


def _settings_from(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("SQUALL_").lower(): v for k, v in env.items()}


def run_dev(options: DevOptions) -> None:
    settings = load_settings()  # any bad SQUALL_* value stops us here, before anything starts
    log_format = settings.log_format if "SQUALL_LOG_FORMAT" in os.environ else "text"
    configure_logging("dev", log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Supervisor(options).run())
