"""`squall dev` runs the whole system with one command; the CLI client submits and reads status."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.dev_process import SQUALL, Dev, alive, processes, wait_until


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = Dev(tmp_path, tmp_path / "data")
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_dev_runs_everything_and_stops_cleanly(dev: Dev) -> None:
    process, state, url = dev.process, dev.state, dev.url
    _check_every_service_up(processes(state))

    env = {**os.environ, "SQUALL_URL": url}
    _check_submit_and_status(env)
    # A large submission from a file (stdin here) is split into requests of --chunk items.
    _check_chunked_submission(env)
    missing = subprocess.run([*SQUALL, "status", "--rid", "nope"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "404" in missing.stderr

    # A child that dies is restarted.
    _kill_processor_and_wait_restarted(state)

    # Ctrl-C / SIGTERM stops everything and removes the state file.
    pids = [p["pid"] for p in processes(state)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "every child gone")
    assert not state.exists()


def _check_every_service_up(table: list[dict[str, Any]]) -> None:
    """One process of each kind, alive; each of squall's own serves its health, readiness and metrics."""
    assert sorted(p["service"] for p in table) == ["gateway", "nats", "postgres", "processor", "scheduler"]
    for entry in table:
        assert isinstance(entry["pid"], int) and alive(entry["pid"])
        if entry["service"] in ("gateway", "processor", "scheduler"):
            port = entry["ports"]["http"]
            for path in ("/healthz", "/readyz", "/metrics"):
                wait_until(
                    lambda u=f"http://127.0.0.1:{port}{path}": httpx.get(u).status_code == 200, 20, path
                )


def _check_submit_and_status(env: dict[str, str]) -> None:
    """``squall submit`` a request, then ``squall status`` finds it by rid (waiting) and by task id."""
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


def _check_chunked_submission(env: dict[str, str]) -> None:
    chunked = subprocess.run(
        [*SQUALL, "submit", "--file", "-", "--chunk", "2", "--rid", "big", "--job", "mul"],
        input="1 2\n3,4\n5\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert chunked.returncode == 0, chunked.stderr
    parts = [json.loads(line) for line in chunked.stdout.splitlines()]
    assert [(p["rid"], p["items"]) for p in parts] == [("big-0", 2), ("big-1", 2), ("big-2", 1)]
    assert "5/5 items" in chunked.stderr  # the progress line
    last = subprocess.run(
        [*SQUALL, "status", "--rid", "big-2", "--wait", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [i["result"] for i in json.loads(last.stdout)["items"]] == [10]


def _kill_processor_and_wait_restarted(state: Path) -> None:
    old = next(p["pid"] for p in processes(state) if p["service"] == "processor")
    os.kill(old, signal.SIGKILL)
    new = wait_until(
        lambda: (
            next(p["pid"] for p in processes(state) if p["service"] == "processor") != old
            and next(p["pid"] for p in processes(state) if p["service"] == "processor")
        ),
        30,
        "processor restarted",
    )
    assert alive(new)


@pytest.mark.slow
def test_killed_supervisor_leaves_no_orphans_and_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Dev(tmp_path, data, "first")
    table = processes(first.state)
    first.process.send_signal(signal.SIGKILL)  # no chance to clean up
    first.process.wait()
    first.log.close()
    direct = [p["pid"] for p in table if p["service"] != "postgres"]
    # SIGTERM from the kernel: each stops gracefully (a gateway serves 2 s more), slower on a busy machine.
    wait_until(lambda: not any(alive(pid) for pid in direct), 40, "children and NATS gone with their parent")
    # PostgreSQL runs as another user when we are root (which clears its parent-death signal): the next
    # squall dev on the same data folder stops that leftover server and starts cleanly.
    second = Dev(tmp_path, data, "second")
    try:
        postgres = next(p["pid"] for p in table if p["service"] == "postgres")
        assert not alive(postgres)
        assert httpx.get(f"{second.url}/readyz").json() == {"status": "ready"}
    finally:
        second.stop()
    assert second.process.returncode == 0
    assert not any(alive(p["pid"]) for p in _processes_or_empty(second.state))


def _processes_or_empty(state: Path) -> list[dict[str, Any]]:
    return processes(state) if state.exists() else []


def _listening_pids(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a listening TCP socket on ``port`` (read from /proc: Linux only)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.add(pid)
    return holders


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreading is Linux's")
def test_several_gateways_share_one_port(tmp_path: Path) -> None:
    """`squall dev --gateways 2`: both listen on the port; when one dies the other keeps answering."""
    dev = Dev(tmp_path, tmp_path / "data", gateways=2)
    try:
        gateways = [p for p in processes(dev.state) if p["service"] == "gateway"]
        assert sorted(p["name"] for p in gateways) == ["gateway-1", "gateway-2"]
        pids = [p["pid"] for p in gateways]
        # squall dev is ready once one gateway answers; the other may still be starting.
        wait_until(lambda: _listening_pids(dev.port, pids) == set(pids), 30, "both gateways listening")
        for n in range(20):  # a new connection each: the kernel spreads them over both
            body = {"rid": f"g{n}", "items": [{"number": n, "job": "square"}]}
            assert httpx.post(f"{dev.url}/v1/requests", json=body).status_code == 202
        os.kill(pids[0], signal.SIGKILL)
        wait_until(
            lambda: pids[0] not in _listening_pids(dev.port, pids), 10, "the killed gateway's socket gone"
        )
        for n in range(20, 40):
            body = {"rid": f"g{n}", "items": [{"number": n, "job": "square"}]}
            assert httpx.post(f"{dev.url}/v1/requests", json=body).status_code == 202
        state = wait_until(
            lambda: httpx.get(f"{dev.url}/v1/requests/g39").json()["processed"], 30, "processed"
        )
        assert state
    finally:
        dev.stop()
