"""One ``squall dev`` for one scenario: start it, wait until every service is ready, stop it for sure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from bench import procs

# Settings that would point squall dev at external servers or change the processings under test.
_STRIPPED_PREFIXES = ("SQUALL_NATS_URL", "SQUALL_DATABASE_URL", "SQUALL_PROCESSINGS__", "SQUALL_GATEWAY__")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# A direct opener: never route 127.0.0.1 through a proxy taken from the environment.
HTTP_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

STOP_TIMEOUT_SECONDS = 60.0  # squall dev's own grace is 25 s for children plus 15 s per embedded server


class DevError(RuntimeError):
    pass


def squall_command() -> list[str]:
    script = Path(sys.executable).parent / "squall"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "squall.cli"]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_PREFIXES) and k not in _PROXY_VARS
    }
    env.update(extra)
    return env


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with HTTP_OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class SquallDev:
    """A ``squall dev`` process tree on loopback, with its own data folder and log file."""

    def __init__(
        self,
        port: int,
        processors: int,
        data_dir: Path,
        env: dict[str, str],
        log_path: Path,
        gateways: int = 1,
    ) -> None:
        self.port = port
        self.processors = processors
        self.gateways = gateways
        self.data_dir = data_dir
        self.state_file = data_dir / "dev.json"
        self.env = child_env(env)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._last_state: list[dict[str, Any]] = []
        # Every process squall dev reported, so that none survives the scenario: pid -> (service, start).
        self.seen: dict[int, tuple[str, int | None]] = {}
        self.leftovers_killed: list[str] = []
        self.exited_early: int | None = None  # squall dev's exit code if it ended before stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [
            *squall_command(),
            "dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--processors",
            str(self.processors),
            "--gateways",
            str(self.gateways),
            "--data-dir",
            str(self.data_dir),
        ]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            # Its own session: a Ctrl-C of the benchmark does not reach it; stop() stops it in order.
            start_new_session=True,
        )
        self.seen[self.popen.pid] = ("supervisor", procs.start_time(self.popen.pid))

    def state(self) -> list[dict[str, Any]]:
        """The process table from dev.json (the last one read if it is missing or being replaced)."""
        try:
            processes = json.loads(self.state_file.read_text())["processes"]
        except (OSError, ValueError, KeyError):
            return self._last_state
        self._last_state = processes
        for entry in processes:
            pid = entry.get("pid")
            if isinstance(pid, int) and pid not in self.seen:
                self.seen[pid] = (str(entry.get("service")), procs.start_time(pid))
        return processes

    def postgres_port(self) -> int:
        """The client port of squall dev's PostgreSQL, from dev.json."""
        for entry in self.state():
            if entry["service"] == "postgres":
                return int(entry["ports"]["client"])
        raise DevError("dev.json lists no postgres")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Wait until NATS, PostgreSQL and every child are listed and each child's /readyz answers 200."""
        assert self.popen is not None
        started = time.monotonic()
        deadline = started + timeout
        expected = {
            "nats": 1,
            "postgres": 1,
            "gateway": self.gateways,
            "processor": self.processors,
            "scheduler": 1,
        }
        while True:
            if self.popen.poll() is not None:
                raise DevError(
                    f"squall dev exited with code {self.popen.returncode} while starting:\n{self.log_tail()}"
                )
            processes = self.state()
            counts: dict[str, int] = {}
            for entry in processes:
                counts[entry["service"]] = counts.get(entry["service"], 0) + 1
            if all(counts.get(s, 0) >= n for s, n in expected.items()) and self._all_ready(processes):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise DevError(
                    f"squall dev not ready after {timeout:.0f} s (saw {counts}):\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def _all_ready(self, processes: list[dict[str, Any]]) -> bool:
        for entry in processes:
            if entry["service"] not in ("gateway", "processor", "scheduler"):
                continue
            try:
                if http_get(f"http://127.0.0.1:{entry['ports']['http']}/readyz", timeout=1.0) != 200:
                    return False
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGINT to squall dev and wait; SIGKILL its group if it hangs; then stop any process it left."""
        try:
            if self.popen is not None and self.popen.poll() is not None and self.exited_early is None:
                self.exited_early = self.popen.returncode
            if self.popen is not None and self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.leftovers_killed.append(f"squall dev (pid {self.popen.pid}) did not stop in time")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.popen.pid, signal.SIGKILL)
                    self.popen.wait(10)
        finally:
            for pid, (service, started) in list(self.seen.items()):
                # PostgreSQL: SIGINT is its fast shutdown; everything else stops on SIGTERM.
                first = signal.SIGINT if service == "postgres" else signal.SIGTERM
                if procs.stop_process(pid, started, first, grace=10.0):
                    self.leftovers_killed.append(f"{service} (pid {pid}) was still running")
            if self._log is not None:
                self._log.close()
                self._log = None

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
