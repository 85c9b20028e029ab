"""The embedded servers survive a port taken between choosing it and binding it; the embedded NATS cluster
elects JetStream leaders, replicates a stream on three nodes and elects again when a leader dies."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from squall.cli import embedded
from squall.cli.embedded import EmbeddedError, NatsCluster, NatsServer
from tests.integration.harness import wait_for


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_chosen_port_taken_meanwhile_is_replaced(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = embedded.free_port
    ports = iter([busy_port, real()])
    monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real())
    server = NatsServer(tmp_path / "nats")
    assert server.port == busy_port
    server.start()
    try:
        assert server.port != busy_port
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass
    finally:
        server.stop()


def test_a_given_port_is_kept_and_a_clash_reported(busy_port: int, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=busy_port)
    with pytest.raises(EmbeddedError, match="exited"):
        server.start(timeout=5)
    assert server.port == busy_port


async def _stream_info(urls: str, stream: str) -> dict[str, object]:
    nc = await nats.connect(servers=urls.split(","))
    try:
        answer = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        return json.loads(answer.data)  # type: ignore[no-any-return]
    finally:
        await nc.close()


async def test_a_three_node_cluster_replicates_and_replaces_a_killed_leader(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster")
    await asyncio.to_thread(cluster.start)
    try:
        meta = cluster.meta_leader()
        assert meta in {"n0", "n1", "n2"}
        assert len(cluster.urls.split(",")) == 3
        nc = await nats.connect(servers=cluster.urls.split(","))
        await nc.jetstream().add_stream(StreamConfig(name="PROBE", subjects=["probe.>"], num_replicas=3))
        # The stream's Raft group elects its leader after add_stream answers: until then no stream takes it.
        leader = await wait_for(
            lambda: asyncio.to_thread(cluster.stream_leader, "PROBE"), what="stream leader"
        )

        async def published() -> bool:
            try:
                await nc.jetstream().publish("probe.one", b"1")
            except nats.js.errors.NoStreamResponseError:
                return False
            return True

        await wait_for(published, what="the message stored")
        await nc.close()
        info = await _stream_info(cluster.urls, "PROBE")
        placement = info["cluster"]
        assert isinstance(placement, dict) and len(placement["replicas"]) == 2
        assert leader == placement["leader"]

        # The stream's leader SIGKILLed: the two others elect one of theirs, and the stream keeps its message.
        victim = cluster.index_of(leader)
        cluster.kill(victim)

        async def new_leader() -> str | None:
            found = await asyncio.to_thread(cluster.stream_leader, "PROBE")
            return found if found not in (None, leader) else None

        await wait_for(new_leader, timeout=30, what="a new stream leader")
        info = await _stream_info(cluster.urls, "PROBE")
        assert info["state"]["messages"] == 1  # type: ignore[index]
        # Restarted on its store, it is current again, and the meta group still has a leader.
        cluster.restart(victim)
        await asyncio.to_thread(cluster.wait_until_current, victim, 30)
        assert cluster.meta_leader() is not None

        # SIGSTOP: the paused node counts as not live until SIGCONT.
        cluster.pause(victim)
        assert victim not in cluster.live()
        cluster.resume(victim)
        assert victim in cluster.live()
    finally:
        cluster.stop()
    assert all(node.process is not None and node.process.poll() is not None for node in cluster.nodes)
