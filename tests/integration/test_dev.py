"""`squall dev` runs the whole system with one command; the CLI client submits and reads status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.core.embedded import free_port

SQUALL = [sys.executable, "-m", "squall.core.cli"]


def _wait(check: Any, timeout: float, what: str) -> Any:
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    port = free_port()
    state = tmp_path / "state.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env["SQUALL_PROCESSINGS__SUM__INTERVAL_SECONDS"] = "0.3"
    log = open(tmp_path / "dev.log", "wb")  # closed at teardown
    process = subprocess.Popen(
        [
            *SQUALL,
            "dev",
            "--port",
            str(port),
            "--processors",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--state-file",
            str(state),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/readyz").status_code == 200, 90, "squall dev ready")
        yield process, state, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def _processes(state: Path) -> list[dict[str, Any]]:
    return json.loads(state.read_text())["processes"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_dev_runs_everything_and_stops_cleanly(dev: tuple[subprocess.Popen[bytes], Path, str]) -> None:
    process, state, url = dev
    table = _wait(lambda: len(_processes(state)) == 5 and _processes(state), 30, "full process table")
    assert sorted(p["service"] for p in table) == ["gateway", "nats", "postgres", "processor", "scheduler"]
    for entry in table:
        assert isinstance(entry["pid"], int) and _alive(entry["pid"])
        if entry["service"] in ("gateway", "processor", "scheduler"):
            port = entry["ports"]["http"]
            for path in ("/healthz", "/readyz", "/metrics"):
                _wait(lambda u=f"http://127.0.0.1:{port}{path}": httpx.get(u).status_code == 200, 20, path)

    env = {**os.environ, "SQUALL_URL": url}
    submitted = subprocess.run(
        [*SQUALL, "submit", "1", "2", "3", "--job", "sum", "--rid", "cli-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["rid"] == "cli-1"
    status = subprocess.run(
        [*SQUALL, "status", "--rid", "cli-1", "--wait", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    answer = json.loads(status.stdout)
    assert answer["processed"] is True and [i["result"] for i in answer["items"]] == [3, 4, 5]
    task = subprocess.run(
        [*SQUALL, "status", json.loads(submitted.stdout)["task_id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(task.stdout)["state"] == "succeeded"
    missing = subprocess.run([*SQUALL, "status", "--rid", "nope"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "404" in missing.stderr

    # A child that dies is restarted.
    old = next(p["pid"] for p in _processes(state) if p["service"] == "processor")
    os.kill(old, signal.SIGKILL)
    new = _wait(
        lambda: (
            next(p["pid"] for p in _processes(state) if p["service"] == "processor") != old
            and next(p["pid"] for p in _processes(state) if p["service"] == "processor")
        ),
        30,
        "processor restarted",
    )
    assert _alive(new)

    # Ctrl-C / SIGTERM stops everything and removes the state file.
    pids = [p["pid"] for p in _processes(state)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    _wait(lambda: not any(_alive(pid) for pid in pids), 10, "every child gone")
    assert not state.exists()
