"""The embedded servers survive a port taken between choosing it and binding it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from squall.cli import embedded
from squall.cli.embedded import EmbeddedError, NatsServer


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
