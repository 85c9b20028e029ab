"""Health checks of dependencies (the external systems a processing needs), and the up/down state machine.

A dependency has a kind and a target:

- ``http``: an ``http://`` or ``https://`` URL; a GET answered 2xx is up (redirects are not followed).
- ``tcp``: ``host:port`` (``[::1]:port`` for IPv6); up if a connection opens.
- ``sql``: a PostgreSQL DSN (``postgresql://``, ``postgres://`` or ``postgresql+asyncpg://``); up if
  ``SELECT 1`` answers.
- ``command``: a command line, split like a shell would but run without one, with a clean environment;
  up if it exits 0. On timeout, or when it exits leaving processes behind, its process group is killed.

:func:`check` never raises for a failing target: it answers a :class:`CheckResult` whose error is short and
holds no password. Only an unknown kind or a malformed target raise ``ValueError``, which
:func:`validate_target` also raises without touching the network (the API answers 422 with it).

:func:`advance` is the pure state machine turning a stream of outcomes into ``unknown``/``up``/``down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from squall.core import metrics
from squall.core.rules import DEPENDENCY_STATES
from squall.core.store import dependencies
from squall.core.targets import split_command, split_host_port, validate_target

# Only these variables reach a check command: no credentials or settings of Squall leak into it.
_COMMAND_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
# The tail of a failing command's output (stdout and stderr together) kept for its error, in bytes.
COMMAND_OUTPUT_LIMIT = 4096
# How long a command that exited may keep its output open (a process it left behind) before its group dies.
_COMMAND_OUTPUT_GRACE_SECONDS = 0.2
# How long to wait, after killing a command's group, for its output to close.
_COMMAND_REAP_SECONDS = 1.0
# Errors of the other kinds are cut to this many characters.
_ERROR_LIMIT = 500


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    # Short and human-readable, without passwords; None when ok.
    error: str | None
    duration_seconds: float


@dataclass(frozen=True)
class DependencyState:
    state: str = "unknown"  # "unknown" | "up" | "down"
    consecutive_failures: int = 0
    consecutive_successes: int = 0

    def __post_init__(self) -> None:
        if self.state not in DEPENDENCY_STATES:
            raise ValueError(
                f"dependency state must be one of {', '.join(DEPENDENCY_STATES)}, not {self.state!r}"
            )
        if self.consecutive_failures < 0 or self.consecutive_successes < 0:
            raise ValueError("consecutive counts cannot be negative")


def advance(
    current: DependencyState, ok: bool, failure_threshold: int, recovery_threshold: int
) -> DependencyState:
    """The state after one more check outcome.

    An outcome resets the count of the opposite one. ``unknown`` turns ``up`` on its first success and
    ``down`` once failures reach ``failure_threshold``; ``up`` turns ``down`` once failures reach
    ``failure_threshold``; ``down`` turns ``up`` once successes reach ``recovery_threshold``.
    """
    if failure_threshold < 1 or recovery_threshold < 1:
        raise ValueError("failure_threshold and recovery_threshold must be at least 1")
    state = current.state
    if ok:
        successes = current.consecutive_successes + 1
        if state == "unknown" or (state == "down" and successes >= recovery_threshold):
            state = "up"
        return DependencyState(state, consecutive_failures=0, consecutive_successes=successes)
    failures = current.consecutive_failures + 1
    if failures >= failure_threshold:
        state = "down"
    return DependencyState(state, consecutive_failures=failures, consecutive_successes=0)


# --- checks ----------------------------------------------------------------------------------------------


async def check(kind: str, target: str, timeout_seconds: float) -> CheckResult:
    """Check a dependency within ``timeout_seconds``; raises only ValueError (bad kind, target, timeout)."""
    validate_target(kind, target)
    if not (math.isfinite(timeout_seconds) and timeout_seconds > 0):
        raise ValueError("timeout_seconds must be a positive number")
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_seconds):
            if kind == "http":
                error = await _check_http(target, timeout_seconds)
            elif kind == "tcp":
                error = await _check_tcp(target)
            elif kind == "sql":
                error = await _check_sql(target, timeout_seconds)
            else:
                error = await _check_command(target)
    except TimeoutError:
        error = f"timed out after {timeout_seconds:g}s"
    except Exception as exc:
        # Scrubbed before it is cut, so that no part of a password survives at the cut.
        error = _scrub(_describe(exc), target)[:_ERROR_LIMIT]
    duration = time.monotonic() - started
    if error is None:
        return CheckResult(ok=True, error=None, duration_seconds=duration)
    return CheckResult(ok=False, error=_scrub(error, target), duration_seconds=duration)


async def _check_http(target: str, timeout_seconds: float) -> str | None:
    # A client of our own: the shared one's queue (max_clients) must not delay or be filled by checks.
    client = AsyncHTTPClient(force_instance=True)
    try:
        request = HTTPRequest(
            target,
            method="GET",
            follow_redirects=False,
            connect_timeout=timeout_seconds,
            request_timeout=timeout_seconds,
            streaming_callback=lambda chunk: None,  # the body does not matter: never hold it in memory
        )
        try:
            response = await client.fetch(request, raise_error=False)
        except HTTPClientError as exc:
            if isinstance(exc, HTTPTimeoutError) or (exc.code == 599 and "timeout" in str(exc).lower()):
                raise TimeoutError from None
            if exc.code == 599:  # tornado's code for a closed stream or another failure without an answer
                return f"no HTTP answer ({exc.message})"
            return f"HTTP {exc.code}"
    finally:
        client.close()
    if 200 <= response.code < 300:
        return None
    return f"HTTP {response.code}"


async def _check_tcp(target: str) -> str | None:
    host, port = split_host_port(target)
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _check_sql(target: str, timeout_seconds: float) -> str | None:
    scheme, rest = target.split("://", 1)
    dsn = ("postgresql" if scheme.lower() == "postgresql+asyncpg" else scheme) + "://" + rest
    conn = await asyncpg.connect(dsn, timeout=timeout_seconds)
    try:
        await conn.fetchval("SELECT 1")
        await conn.close()
    except BaseException:
        conn.terminate()  # close() would wait on the network that just failed or ran out of time
        raise
    return None


async def _check_command(target: str) -> str | None:
    argv = split_command(target)
    env = {key: os.environ[key] for key in _COMMAND_ENV_KEEP if key in os.environ}
    loop = asyncio.get_running_loop()
    try:
        # The protocol API, not asyncio.subprocess: Process.wait() also waits for the output to close,
        # which a process the command left behind can hold open for as long as it likes.
        transport, protocol = await loop.subprocess_exec(
            _CommandProtocol,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    try:
        await protocol.exited.wait()
        # Output still open after the exit: a process the command left behind holds it. Wait a moment only.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.output_closed.wait(), _COMMAND_OUTPUT_GRACE_SECONDS)
    finally:
        # On timeout or cancellation this ends the command; after an exit, whatever it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(transport.get_pid(), signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.exited.wait(), _COMMAND_REAP_SECONDS)
        transport.close()  # our end of the output, even if a process that left the group still holds it
    code = transport.get_returncode()
    if code == 0:
        return None
    text = protocol.output.decode(errors="replace").strip()
    if code is not None and code < 0:
        try:
            head = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            head = f"killed by signal {-code}"
    else:
        head = f"exit code {code}"
    return f"{head}: {text}" if text else head


class _CommandProtocol(asyncio.SubprocessProtocol):
    """Keeps the last COMMAND_OUTPUT_LIMIT bytes of a command's output; tells its exit and end of output."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exited = asyncio.Event()
        self.output_closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self.output += data
        if len(self.output) > COMMAND_OUTPUT_LIMIT:
            del self.output[:-COMMAND_OUTPUT_LIMIT]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.output_closed.set()

    def process_exited(self) -> None:
        self.exited.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scrub(error: str, target: str) -> str:
    """The error without any password the target holds (a URL's, or one in a URL of a command line)."""
    for secret in _passwords(target):
        error = error.replace(secret, "***")
    return error


def _passwords(target: str) -> list[str]:
    found: set[str] = set()
    for word in [target, *target.split()]:
        if "://" not in word or "@" not in word:
            continue
        credentials = word.split("://", 1)[1].rsplit("@", 1)[0]
        _, colon, password = credentials.partition(":")
        if colon and password:
            found.update({password, unquote(password)})
    # Longest first, so that a password containing another is replaced whole.
    return sorted((s for s in found if s), key=len, reverse=True)


async def check_and_record(engine: AsyncEngine, dependency: dict[str, Any]) -> CheckResult:
    """Run one dependency's check now, advance its state and store it (the leader, or check-now)."""
    result = await check(dependency["kind"], dependency["target"], dependency["timeout_seconds"])
    state = advance(
        DependencyState(
            dependency["state"], dependency["consecutive_failures"], dependency["consecutive_successes"]
        ),
        result.ok,
        dependency["failure_threshold"],
        dependency["recovery_threshold"],
    )
    await dependencies.record_check(
        engine,
        dependency["name"],
        state.state,
        state.consecutive_failures,
        state.consecutive_successes,
        result.error,
    )
    metrics.DEPENDENCY_UP.labels(dependency["name"]).set({"up": 1, "down": 0}.get(state.state, -1))
    return result
