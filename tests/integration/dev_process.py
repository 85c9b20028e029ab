"""A ``squall dev`` process for tests that run the whole system as a user does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from squall.cli.embedded import free_port

SQUALL = [sys.executable, "-m", "squall.cli"]


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, httpx.HTTPError, ValueError, KeyError):
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Dev:
    """A ``squall dev`` process, its state file and its gateway URL."""

    def __init__(
        self,
        tmp_path: Path,
        data_dir: Path,
        name: str = "dev",
        gateways: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.state = tmp_path / f"{name}-state.json"
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
        environment["SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS"] = "0.3"
        environment.update(env or {})
        self.log = open(tmp_path / f"{name}.log", "wb")  # closed by stop()
        self.process = subprocess.Popen(
            [
                *SQUALL,
                "dev",
                "--port",
                str(self.port),
                "--processors",
                "1",
                "--gateways",
                str(gateways),
                "--data-dir",
                str(data_dir),
                "--state-file",
                str(self.state),
            ],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, 90, "squall dev ready")
        wait_until(lambda: len(processes(self.state)) == 4 + gateways, 30, "full process table")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def processes(state: Path) -> list[dict[str, Any]]:
    return json.loads(state.read_text())["processes"]  # type: ignore[no-any-return]
