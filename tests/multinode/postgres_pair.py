"""A replicated PostgreSQL for tests: a primary and a hot standby by streaming replication, synchronous.

Both run the ``pgserver`` wheel's binaries (``squall.cli.embedded.PostgresServer``), each on its own free
loopback port and data folder. The standby is a ``pg_basebackup -R`` of the primary; the primary's
``synchronous_standby_names`` names the standby's ``application_name`` (and ``synchronous_commit`` is on),
so a transaction committed on the primary is on the standby too. Fault tests SIGKILL the primary (its whole
process group, as when its node dies) and promote the standby (``pg_ctl promote``), as an operator or a
failover manager would; the old primary can then rejoin as the new one's standby (a fresh base backup), and
the same two steps fail back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from squall.cli.embedded import PG_OS_USER, EmbeddedError, PostgresServer


class PostgresPair:
    """Nodes ``a`` (first primary) and ``b`` (its synchronous standby) of one replicated cluster."""

    def __init__(self, root: Path, database: str = "squall") -> None:
        self.database = database
        self.nodes = {name: PostgresServer(root / name, database=database) for name in ("a", "b")}
        self.primary_name = "a"

    @property
    def primary(self) -> PostgresServer:
        return self.nodes[self.primary_name]

    @property
    def standby(self) -> PostgresServer:
        return self.nodes["b" if self.primary_name == "a" else "a"]

    @property
    def url(self) -> str:
        """Both hosts, the writable one wanted: what Squall connects with."""
        hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in self.nodes.values())
        return f"postgresql+asyncpg://postgres@/{self.database}?{hosts}&target_session_attrs=read-write"

    @property
    def dsn(self) -> str:
        """The same for asyncpg alone: it keeps only the last of repeated ``host`` parameters (SQLAlchemy's
        dialect turns them into lists before asyncpg sees them), so it gets libpq's comma-separated form."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes.values())
        return f"postgresql://postgres@{hosts}/{self.database}?target_session_attrs=read-write"

    def start(self, timeout: float = 60.0) -> None:
        """The primary, then the standby from its base backup, streaming synchronously."""
        primary, standby = self.primary, self.standby
        primary.start(timeout)
        self._clone(primary, standby, timeout)
        self.psql(primary, f"ALTER SYSTEM SET synchronous_standby_names = '{self.app_name(standby)}'")
        self.psql(primary, "SELECT pg_reload_conf()")
        self.wait_synchronous(timeout)

    @staticmethod
    def app_name(node: PostgresServer) -> str:
        return f"node_{node.data_dir.name}"

    def _clone(self, source: PostgresServer, target: PostgresServer, timeout: float) -> None:
        """``target`` becomes a streaming standby of ``source`` (a fresh base backup), and starts."""
        pgdata = target.data_dir / "pgdata"
        target.data_dir.mkdir(parents=True, exist_ok=True)
        conninfo = f"host=127.0.0.1 port={source.port} user=postgres application_name={self.app_name(target)}"
        subprocess.run(
            [
                str(source.bin / "pg_basebackup"),
                "-d",
                conninfo,
                "-D",
                str(pgdata),
                "-R",  # standby.signal and primary_conninfo (with the application_name above)
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        target.start(timeout)  # as root, start() hands the copied folder to the server's own user

    def psql(self, node: PostgresServer, sql: str, timeout: float = 30.0) -> str:
        """Run one statement on ``node`` (by its own port); its output, unaligned."""
        done = subprocess.run(
            [
                str(node.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(node.port),
                "-U",
                "postgres",
                "-tA",
                "-d",
                self.database,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise EmbeddedError(f"psql on port {node.port}: {done.stderr.strip()}")
        return done.stdout.strip()

    def wait_synchronous(self, timeout: float = 60.0) -> None:
        """Until the primary reports its standby streaming as its synchronous standby."""
        deadline = time.monotonic() + timeout
        query = "SELECT application_name, state, sync_state FROM pg_stat_replication"
        while True:
            rows = self.psql(self.primary, query)
            if f"{self.app_name(self.standby)}|streaming|sync" in rows.splitlines():
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"no synchronous standby after {timeout} s: {rows!r}")
            time.sleep(0.05)

    def in_recovery(self, node: PostgresServer) -> bool:
        return self.psql(node, "SELECT pg_is_in_recovery()") == "t"

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every backend (its process group): its node died."""
        process = self.primary.process
        assert process is not None and process.poll() is None, "the primary is not running"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def promote(self, timeout: float = 60.0) -> None:
        """``pg_ctl promote`` the standby and wait until it accepts writes; it is the primary from now on.
        It runs alone: it has no synchronous standby to wait for (as a failover manager leaves it until the
        old primary rejoins)."""
        standby = self.standby
        subprocess.run(
            [
                str(standby.bin / "pg_ctl"),
                "promote",
                "-w",
                "-t",
                str(int(timeout)),
                "-D",
                str(standby.data_dir / "pgdata"),
            ],
            check=True,
            capture_output=True,
            timeout=timeout + 5,
            user=PG_OS_USER if os.geteuid() == 0 else None,
            group=PG_OS_USER if os.geteuid() == 0 else None,
        )
        self.primary_name = standby.data_dir.name
        if self.in_recovery(standby):
            raise EmbeddedError("the standby is still in recovery after pg_ctl promote")

    def rejoin(self, timeout: float = 60.0) -> None:
        """The old primary, dead, comes back as the synchronous standby of the new one: a fresh base backup
        of the new primary replaces its data (what it wrote and the standby never received, if anything,
        is discarded: no acknowledged commit, synchronous replication saw to that)."""
        old = self.standby
        assert old.process is None or old.process.poll() is not None, "the old primary still runs"
        shutil.rmtree(old.data_dir / "pgdata")
        self._clone(self.primary, old, timeout)
        self.psql(self.primary, f"ALTER SYSTEM SET synchronous_standby_names = '{self.app_name(old)}'")
        self.psql(self.primary, "SELECT pg_reload_conf()")
        self.wait_synchronous(timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
