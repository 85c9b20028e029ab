"""Process helpers: free ports, RSS of a pid, and stopping leftover processes safely (pid reuse aware)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

try:
    import psutil as _psutil
except ImportError:  # psutil is optional: /proc is read instead
    _psutil = None

RSS_SOURCE = "psutil" if _psutil is not None else "/proc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if it is gone.

    A pid together with its start time names one process even if the pid is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def alive(pid: int, started: int | None) -> bool:
    current = start_time(pid)
    if current is None:
        return False
    if started is not None and current != started:
        return False  # the pid now belongs to another process
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2 :].startswith("Z"):
            return False  # a zombie: exited, waiting to be reaped
    return True


def rss_kb(pid: int) -> int | None:
    """Resident set size of one process in KiB (None if it is gone)."""
    if _psutil is not None:
        try:
            return int(_psutil.Process(pid).memory_info().rss // 1024)
        except (_psutil.NoSuchProcess, _psutil.AccessDenied, _psutil.ZombieProcess):
            return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kb(pid: int) -> int | None:
    """Proportional set size of one process in KiB: its private pages plus its share of pages it shares
    (PostgreSQL's shared buffers are counted once over all its processes, not once per backend)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far (/proc/PID/stat fields 14 and 15); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    if _psutil is not None:
        try:
            return [c.pid for c in _psutil.Process(pid).children(recursive=False)]
        except (_psutil.NoSuchProcess, _psutil.AccessDenied):
            return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def stop_process(pid: int, started: int | None, first: signal.Signals, grace: float) -> bool:
    """Send ``first``, then SIGKILL after ``grace`` seconds; True if the process was running."""
    if not alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid, started):
            return True
        time.sleep(0.1)
    if alive(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True
