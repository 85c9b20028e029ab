"""Dependency checks of each kind (http, tcp, sql, command) against servers and commands the tests start.

Nothing leaves the machine: HTTP and TCP servers listen on 127.0.0.1 (port 0), commands are this Python.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from squall.core import checks
from squall.core.checks import COMMAND_OUTPUT_LIMIT, CheckResult, check
from tests.unit.checks_helpers import SECRET
from tests.unit.processes import is_gone, read_text, wait_gone

# --- helpers ---------------------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_pids(path: Path, count: int, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        words = read_text(path).split()
        if len(words) == count:
            return [int(w) for w in words]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} pids not written to {path}")


def python(code: str, *args: str) -> str:
    """A command target running ``code`` with this interpreter (quoted for shlex)."""
    return shlex.join([sys.executable, "-c", code, *args])


# A child that starts a grandchild (sharing its output unless told otherwise), writes both pids, then waits.
FAMILY = """
import os, subprocess, sys, time
out = subprocess.DEVNULL if sys.argv[2] == "devnull" else None
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=out, stderr=out)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {g.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(float(sys.argv[3]))
"""


# --- servers ---------------------------------------------------------------------------------------------


class _Status(tornado.web.RequestHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        if int(code) != 204:
            self.finish("body")


class _Redirect(tornado.web.RequestHandler):
    def get(self) -> None:
        self.redirect("/status/200")


@pytest.fixture
async def http_base() -> AsyncIterator[str]:
    """A Tornado server on 127.0.0.1: /status/<code> answers that code, /redirect answers 302."""
    app = tornado.web.Application([(r"/status/(\d{3})", _Status), (r"/redirect", _Redirect)])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.stop()
    await server.close_all_connections()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts, reads and never answers (until the client leaves)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where a command writes its pids; whatever is still running when the test ends is killed."""
    path = tmp_path / "pids"
    yield path
    for pid in [int(w) for w in read_text(path).split()]:
        if not is_gone(pid):
            os.kill(pid, 9)


# --- http ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 204])
async def test_http_2xx_is_up(http_base: str, code: int) -> None:
    result = await check("http", f"{http_base}/status/{code}", 2.0)
    assert result == CheckResult(ok=True, error=None, duration_seconds=result.duration_seconds)
    assert 0 <= result.duration_seconds < 2.0


@pytest.mark.parametrize("code", [503, 500, 404, 418])
async def test_http_other_status_is_down(http_base: str, code: int) -> None:
    result = await check("http", f"{http_base}/status/{code}", 2.0)
    assert (result.ok, result.error) == (False, f"HTTP {code}")


async def test_http_redirect_is_not_followed(http_base: str) -> None:
    result = await check("http", f"{http_base}/redirect", 2.0)
    assert (result.ok, result.error) == (False, "HTTP 302")


async def test_http_connection_refused() -> None:
    result = await check("http", f"http://127.0.0.1:{closed_port()}/health", 2.0)
    assert (result.ok, result.error) == (False, "connection refused")


async def test_http_connection_closed_without_answer() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await check("http", f"http://127.0.0.1:{port}/", 2.0)
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok and result.error
    assert result.error.startswith("no HTTP answer")


async def test_http_timeout(silent_port: int) -> None:
    result = await check("http", f"http://127.0.0.1:{silent_port}/", 0.3)
    assert (result.ok, result.error) == (False, "timed out after 0.3s")
    assert 0.25 < result.duration_seconds < 2.3


async def test_http_credentials_stay_out_of_the_error(http_base: str) -> None:
    target = http_base.replace("://", f"://squall:{SECRET}@") + "/status/503"
    result = await check("http", target, 2.0)
    assert (result.ok, result.error) == (False, "HTTP 503")


# --- tcp -------------------------------------------------------------------------------------------------


async def test_tcp_up(silent_port: int) -> None:
    result = await check("tcp", f"127.0.0.1:{silent_port}", 2.0)
    assert (result.ok, result.error) == (True, None)


async def test_tcp_refused() -> None:
    result = await check("tcp", f"127.0.0.1:{closed_port()}", 2.0)
    assert (result.ok, result.error) == (False, "connection refused")


async def test_tcp_ipv6_loopback() -> None:
    try:
        server = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        port = server.sockets[0].getsockname()[1]
        result = await check("tcp", f"[::1]:{port}", 2.0)
        assert (result.ok, result.error) == (True, None)
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(60)

    monkeypatch.setattr(asyncio, "open_connection", never)
    result = await check("tcp", "10.255.255.1:5432", 0.1)
    assert (result.ok, result.error) == (False, "timed out after 0.1s")
    assert result.duration_seconds < 2.1


# --- sql -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+asyncpg", "postgres"])
async def test_sql_unreachable_without_password_in_error(scheme: str) -> None:
    result = await check("sql", f"{scheme}://squall:{SECRET}@127.0.0.1:{closed_port()}/squall", 3.0)
    assert not result.ok
    assert result.error
    assert SECRET not in result.error


async def test_sql_scheme_handed_to_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []

    async def connect(dsn: str, timeout: float) -> Any:
        seen.append((dsn, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(checks.asyncpg, "connect", connect)
    result = await check("sql", "postgresql+asyncpg://u@db:5432/squall", 1.5)
    assert (result.ok, result.error) == (False, "connection refused")
    assert seen == [("postgresql://u@db:5432/squall", 1.5)]


@pytest.mark.parametrize(
    ("password", "leaked"),
    [(SECRET, SECRET), ("p%40ss%2Fword", "p%40ss%2Fword"), ("p%40ss%2Fword", "p@ss/word")],
)
async def test_sql_password_scrubbed_from_any_error(
    monkeypatch: pytest.MonkeyPatch, password: str, leaked: str
) -> None:
    async def connect(dsn: str, timeout: float) -> Any:
        raise RuntimeError(f"could not use {dsn} (password {leaked})")

    monkeypatch.setattr(checks.asyncpg, "connect", connect)
    result = await check("sql", f"postgresql://squall:{password}@db/squall", 1.0)
    assert not result.ok and result.error
    assert leaked not in result.error
    assert result.error.startswith("RuntimeError: could not use postgresql://squall:***@db/squall")


async def test_long_error_cut_after_the_password_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(dsn: str, timeout: float) -> Any:
        raise RuntimeError("x" * 460 + dsn)  # the cut at 500 characters falls inside the password

    monkeypatch.setattr(checks.asyncpg, "connect", connect)
    password = "p" * 40
    result = await check("sql", f"postgresql://u:{password}@db/squall", 1.0)
    assert result.error is not None
    assert len(result.error) <= 500
    assert "pppp" not in result.error


async def test_sql_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(dsn: str, timeout: float) -> Any:
        await asyncio.sleep(60)

    monkeypatch.setattr(checks.asyncpg, "connect", connect)
    result = await check("sql", "postgresql://db/squall", 0.1)
    assert (result.ok, result.error) == (False, "timed out after 0.1s")


class FakeConnection:
    """What the patched ``asyncpg.connect`` returns: its query answers 1, or raises ``query_error``; the
    query, ``close`` and ``terminate`` are noted in ``calls`` (a failing query is not)."""

    def __init__(self, query_error: Exception | None = None) -> None:
        self.query_error = query_error
        self.calls: list[str] = []

    async def fetchval(self, query: str) -> int:
        if self.query_error is not None:
            raise self.query_error
        self.calls.append(query)
        return 1

    async def close(self) -> None:
        self.calls.append("close")

    def terminate(self) -> None:
        self.calls.append("terminate")


async def sql_check_on(conn: FakeConnection, monkeypatch: pytest.MonkeyPatch) -> CheckResult:
    """The sql check of postgresql://db/squall, with ``asyncpg.connect`` patched to return ``conn``."""

    async def connect(dsn: str, timeout: float) -> FakeConnection:
        return conn

    monkeypatch.setattr(checks.asyncpg, "connect", connect)
    return await check("sql", "postgresql://db/squall", 1.0)


async def test_sql_select_one_then_close(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = FakeConnection()
    result = await sql_check_on(conn, monkeypatch)
    assert (result.ok, result.error, conn.calls) == (True, None, ["SELECT 1", "close"])


async def test_sql_failing_query_terminates_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = FakeConnection(query_error=RuntimeError("server closed the connection"))
    result = await sql_check_on(conn, monkeypatch)
    assert (result.ok, result.error, conn.calls) == (
        False,
        "RuntimeError: server closed the connection",
        ["terminate"],
    )


# --- command ---------------------------------------------------------------------------------------------


async def test_command_exit_0_is_up() -> None:
    result = await check("command", python("print('fine')"), 5.0)
    assert (result.ok, result.error) == (True, None)


async def test_command_exit_code_and_output_in_error() -> None:
    code = "import sys; print('to stdout'); print('boom', file=sys.stderr); sys.exit(3)"
    result = await check("command", python(code), 5.0)
    assert not result.ok and result.error
    assert result.error.startswith("exit code 3: ")
    assert "to stdout" in result.error and "boom" in result.error


async def test_command_output_in_error_is_bounded() -> None:
    code = "import sys; sys.stdout.write('a' * 100_000 + 'END'); sys.exit(1)"
    result = await check("command", python(code), 5.0)
    assert result.error is not None
    assert result.error.endswith("aaaEND")  # the tail is kept: that is where the reason usually is
    assert len(result.error) <= COMMAND_OUTPUT_LIMIT + len("exit code 1: ")


async def test_command_killed_by_signal() -> None:
    result = await check("command", python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), 5.0)
    assert (result.ok, result.error) == (False, "killed by signal SIGKILL")


async def test_command_not_found() -> None:
    result = await check("command", "/nonexistent/squall-check --x", 5.0)
    assert not result.ok and result.error
    assert result.error.startswith("cannot run '/nonexistent/squall-check'")


async def test_command_runs_without_shell() -> None:
    # With a shell `$HOME` would be expanded and `;` would start a second command.
    code = "import sys; sys.exit(0 if sys.argv[1:] == ['$HOME;', 'exit', '7'] else 1)"
    result = await check("command", python(code) + " '$HOME;' exit 7", 5.0)
    assert (result.ok, result.error) == (True, None)


async def test_command_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKS_TEST_TOKEN", "hush")
    monkeypatch.setenv("TZ", "UTC")
    code = "import os, sys; print(' '.join(sorted(os.environ))); sys.exit(1)"
    result = await check("command", python(code), 5.0)
    assert result.error is not None
    names = set(result.error.removeprefix("exit code 1: ").split())
    assert "TZ" in names
    assert names <= {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "LC_CTYPE"}  # LC_CTYPE: Python's own


async def test_command_password_in_arguments_scrubbed() -> None:
    code = "import sys; print(sys.argv[1]); sys.exit(2)"
    result = await check("command", python(code, f"postgresql://squall:{SECRET}@db/squall"), 5.0)
    assert result.error == "exit code 2: postgresql://squall:***@db/squall"


async def test_command_timeout_kills_the_process_group(pid_file: Path) -> None:
    started = time.monotonic()
    result = await check("command", python(FAMILY, str(pid_file), "shared", "30"), 1.0)
    elapsed = time.monotonic() - started
    assert (result.ok, result.error) == (False, "timed out after 1s")
    assert elapsed < 1.0 + 2.0
    child, grandchild = await read_pids(pid_file, 2)
    assert await wait_gone(child)
    assert await wait_gone(grandchild)


@pytest.mark.parametrize("output", ["shared", "devnull"])
async def test_command_leftovers_killed_after_exit(pid_file: Path, output: str) -> None:
    started = time.monotonic()
    result = await check("command", python(FAMILY, str(pid_file), output, "0"), 5.0)
    assert (result.ok, result.error) == (True, None)
    assert time.monotonic() - started < 2.0  # the grandchild holding the output does not stall the check
    child, grandchild = await read_pids(pid_file, 2)
    assert await wait_gone(child)
    assert await wait_gone(grandchild)


async def test_cancelled_check_kills_the_command(pid_file: Path) -> None:
    task = asyncio.create_task(check("command", python(FAMILY, str(pid_file), "shared", "30"), 30.0))
    child, grandchild = await read_pids(pid_file, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(child)
    assert await wait_gone(grandchild)
