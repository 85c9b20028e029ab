"""Helpers of the unit tests that watch child processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


def is_gone(pid: int) -> bool:
    """The process no longer exists or is a zombie waiting to be reaped (it no longer runs either way)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        await asyncio.sleep(0.02)
    return is_gone(pid)


def read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
