"""Squall's services as OS processes, each running either the previous release or the working tree."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from squall.cli.embedded import free_port
from tests.integration.harness import wait_for
from tests.upgrade.release import BuiltRelease

Code = Literal["old", "new"]
T = TypeVar("T")


@dataclass
class Service:
    name: str
    role: str
    code: Code
    port: int  # the gateway's API port; a processor's or scheduler's /metrics, /healthz, /readyz
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Fleet:
    """Services by instance name. The old release's run from its own environment in a folder outside the
    working tree; the working tree's with this interpreter, as ``ServiceProcesses`` does."""

    def __init__(self, old: BuiltRelease, settings: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.old = old
        self.settings = settings  # SQUALL_* variables every service gets
        self.log_dir = log_dir
        self.cwd = cwd
        self.services: dict[str, Service] = {}

    def start(self, role: str, name: str, code: Code) -> Service:
        port = free_port()
        port_setting = {
            "gateway": "SQUALL_GATEWAY__PORT",
            "processor": "SQUALL_PROCESSOR__HTTP_PORT",
            "scheduler": "SQUALL_SCHEDULER__HTTP_PORT",
        }[role]
        env = self.old.env(**self.settings, SQUALL_INSTANCE_ID=name, **{port_setting: str(port)})
        python = str(self.old.python) if code == "old" else sys.executable
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [python, "-m", "squall.cli", role], env=env, cwd=self.cwd, stdout=out, stderr=out
            )
        self.services[name] = Service(name, role, code, port, process, log)
        return self.services[name]

    async def ready(self, name: str, timeout: float = 60.0) -> Service:
        """Wait until the service answers /readyz with 200 (fails at once if it exited)."""
        service = self.services[name]

        async def answers() -> bool:
            exited = service.process.poll()
            assert exited is None, f"{name} exited with {exited}:\n{self.tail(name)}"
            try:
                async with httpx.AsyncClient(timeout=2.0) as http:
                    return (await http.get(f"{service.url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(answers, timeout=timeout, interval=0.1, what=f"{name} ready")
        return service

    async def stop(self, name: str, timeout: float = 30.0) -> float:
        """SIGTERM (a rolling update's graceful stop); the seconds it took to exit, which must be cleanly."""
        process = self.services[name].process
        loop = asyncio.get_running_loop()
        started = loop.time()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, timeout)  # the load goes on meanwhile
        assert code == 0, f"{name} exited with {code} on SIGTERM:\n{self.tail(name)}"
        return loop.time() - started

    def stop_all(self) -> None:
        running = [s.process for s in self.services.values() if s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def running(self, code: Code, role: str) -> list[Service]:
        return [
            s
            for s in self.services.values()
            if s.code == code and s.role == role and s.process.poll() is None
        ]

    def tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self.services[name].log.read_text(errors="replace").splitlines()[-lines:])

    def errors(self) -> list[str]:
        """Every line logged at error level or above by any service, short: its message and the last line of
        its traceback (services log JSON: what is not JSON, e.g. an interpreter that died, counts if it
        looks like an error)."""
        found = []
        for service in self.services.values():
            for line in service.log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if "Traceback" in line or "Error" in line:
                        found.append(f"{service.name}: {line}")
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                    cause = str(entry.get("exc", "")).strip().splitlines()[-1:]
                    found.append(" ".join([f"{service.name}: {entry.get('msg')}", *cause]))
        return found

    def errors_summary(self) -> str:
        """The errors logged, each distinct one once with how many times it was logged."""
        counted = Counter(self.errors())
        lines = [f"  {n} times: {error}" for error, n in counted.most_common(10)]
        return f"errors the services logged: {sum(counted.values())}\n" + "\n".join(lines)

    async def wait(self, check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
        """``wait_for`` whose failure also shows what the services logged as errors: the first thing to read
        when an old and a new release do not get along."""
        try:
            answer = await wait_for(check, timeout=timeout, interval=0.1, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.errors_summary()}") from None
        assert answer is not None  # wait_for returns only a truthy answer
        return answer


async def tasks_finished(service: Service, kind: str, processing: str = "") -> float:
    """The tasks of ``kind`` a processor finished successfully, from its /metrics (the same counter in the
    previous release and the working tree): which events it consumed, whoever published them."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(f"{service.url}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "squall_tasks"
        for sample in family.samples
        if sample.name == "squall_tasks_total"
        and sample.labels == {"kind": kind, "processing": processing, "outcome": "succeeded"}
    )
