"""NATS credentials and TLS: Squall connects to a real nats-server that requires them, and fails without."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from squall.cli.embedded import NatsServer
from squall.core import broker
from tests.integration.harness import make_settings


async def _connects(url: str, database_url: str, **nats: object) -> None:
    settings = make_settings(url, database_url, nats={"connect_retry_seconds": 0, **nats})
    nc = await broker.connect(settings, "auth-test")
    try:
        await broker.ensure_streams(nc.jetstream(), settings)  # JetStream works through it
    finally:
        await nc.close()


async def test_user_and_password(tmp_path: Path, database_url: str) -> None:
    server = NatsServer(tmp_path / "nats", extra_args=["--user", "squall", "--pass", "s3cret-pw"])
    server.start()
    try:
        await _connects(server.url, database_url, user="squall", password="s3cret-pw")
        with pytest.raises(broker.NatsUnavailable, match="refused the credentials"):
            await _connects(server.url, database_url, user="squall", password="wrong")
        with pytest.raises(broker.NatsUnavailable):
            await _connects(server.url, database_url)
    finally:
        server.stop()


async def test_mutual_tls(tmp_path: Path, database_url: str) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("squall-processor")
    files = {
        "ca": tmp_path / "ca.pem",
        "server": tmp_path / "server.pem",
        "server_key": tmp_path / "server.key",
        "client": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["server"]))
    server_cert.private_key_pem.write_to_path(str(files["server_key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["client"]))
    client_cert.private_key_pem.write_to_path(str(files["client_key"]))
    server = NatsServer(
        tmp_path / "nats",
        extra_args=[
            "--tlsverify",
            "--tlscert",
            str(files["server"]),
            "--tlskey",
            str(files["server_key"]),
            "--tlscacert",
            str(files["ca"]),
        ],
    )
    server.start()
    url = server.url.replace("nats://", "tls://")
    try:
        await _connects(
            url,
            database_url,
            tls_ca_file=str(files["ca"]),
            tls_cert_file=str(files["client"]),
            tls_key_file=str(files["client_key"]),
        )
        # Without a client certificate the server refuses us.
        with pytest.raises(broker.NatsUnavailable):
            await _connects(url, database_url, tls_ca_file=str(files["ca"]))
    finally:
        server.stop()


async def test_an_unreachable_server_ends_the_wait(database_url: str) -> None:
    from squall.cli.embedded import free_port

    with pytest.raises(broker.NatsUnavailable, match="not reachable within"):
        await _connects(f"nats://127.0.0.1:{free_port()}", database_url, connect_timeout_seconds=0.5)
