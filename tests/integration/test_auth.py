"""Access control: bearer tokens with scopes (PostgreSQL and a tokens file), rate limits, trusted networks
for the old contract, and the connection cap — against a real gateway, NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.core.settings import Settings
from squall.gateway import auth
from tests.integration.harness import ROOT, System, make_settings, squall_cli, wait_for


async def create_token(settings: Settings, name: str, *scopes: str, extra: tuple[str, ...] = ()) -> str:
    argv = ["tokens", "create", name, *(a for s in scopes for a in ("--scope", s)), *extra]
    done = await asyncio.to_thread(squall_cli, settings, *argv)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith(auth.TOKEN_PREFIX) and len(token) > 40
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    # JSON; /number_request's answers keep the original's charset parameter.
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json() == {
        "error": {"code": code, "message": response.json()["error"]["message"], "field": field}
    }


async def _check_listing_and_revocation(
    settings: Settings, system: System, submitter: str, reader: str, admin: str
) -> None:
    """The tokens list shows names and scopes, never a token; a revoked token stops working."""
    client = system.client
    # The list shows names and scopes, never a token or its digest.
    listed = await asyncio.to_thread(squall_cli, settings, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    tokens = json.loads(listed.stdout)
    assert {t["name"]: t["scopes"] for t in tokens} == {
        "ci-submit": ["submit"],
        "dashboard": ["read"],
        "ops": ["admin"],
    }
    assert submitter not in listed.stdout and auth.token_digest(submitter) not in listed.stdout
    stored = await system.fetch("SELECT token_sha256 FROM api_tokens")
    assert {r["token_sha256"] for r in stored} == {auth.token_digest(t) for t in (submitter, reader, admin)}

    # A revoked token stops working once the gateway's short cache expires; its name is not reused.
    revoked = await asyncio.to_thread(squall_cli, settings, "tokens", "revoke", "dashboard")
    assert revoked.returncode == 0, revoked.stderr

    async def refused() -> bool:
        return (await client.get("/v1/requests/auth-1", headers=bearer(reader))).status_code == 401

    await wait_for(refused, timeout=5, what="the revoked token refused")
    again = await asyncio.to_thread(squall_cli, settings, "tokens", "create", "dashboard", "--scope", "read")
    assert again.returncode == 1 and "exists" in again.stderr
    bad_name = await asyncio.to_thread(
        squall_cli, settings, "tokens", "create", "Bad Name", "--scope", "read"
    )
    assert bad_name.returncode == 2


async def test_tokens_and_scopes(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(nats_url, database_url, auth={"required": True, "cache_seconds": 0.2})
    system = await system_factory(settings)
    client = system.client
    submitter = await create_token(settings, "ci-submit", "submit")
    reader = await create_token(settings, "dashboard", "read")
    admin = await create_token(settings, "ops", "admin")
    body = {"rid": "auth-1", "items": [{"number": 4, "job": "sum"}]}

    # No token, a malformed header, an unknown token: 401 naming the header, with a challenge.
    missing = await client.post("/v1/requests", json=body)
    assert_error(missing, 401, "unauthorized", "Authorization")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(
        await client.post("/v1/requests", json=body, headers={"Authorization": f"Basic {submitter}"}),
        401,
        "unauthorized",
        "Authorization",
    )
    unknown = await client.post("/v1/requests", json=body, headers=bearer(auth.new_token()))
    assert_error(unknown, 401, "unauthorized", "Authorization")
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    assert await system.fetchval("SELECT count(*) FROM requests") == 0  # nothing accepted without a token

    # Each scope opens its routes only; admin opens everything.
    assert (await client.post("/v1/requests", json=body, headers=bearer(submitter))).status_code == 202
    assert_error(
        await client.get("/v1/requests/auth-1", headers=bearer(submitter)), 403, "forbidden", "Authorization"
    )
    assert (await client.get("/v1/requests/auth-1", headers=bearer(reader))).status_code == 200
    assert (await client.get("/v1/tasks", headers=bearer(reader))).status_code == 200
    assert_error(
        await client.post("/v1/requests", json=body, headers=bearer(reader)),
        403,
        "forbidden",
        "Authorization",
    )
    for path in ("/v1/schedules", "/v1/processings", "/v1/dependencies", "/v1/schedulers"):
        assert_error(await client.get(path, headers=bearer(reader)), 403, "forbidden", "Authorization")
        assert (await client.get(path, headers=bearer(admin))).status_code == 200, path
    assert_error(
        await client.post(f"/v1/tasks/{'0' * 8}-0000-0000-0000-{'0' * 12}/retry", headers=bearer(reader)),
        403,
        "forbidden",
        "Authorization",
    )
    assert (await client.get("/v1/requests/auth-1", headers=bearer(admin))).status_code == 200

    # The old contract is subject to the same tokens.
    legacy = {"rid": 77, "numbers": [1, 2], "jobtodo": ["sum", "sum"]}
    assert_error(await client.post("/number_request", json=legacy), 401, "unauthorized", "Authorization")
    assert (await client.post("/number_request", json=legacy, headers=bearer(submitter))).status_code == 201
    assert (
        await client.get("/number_request", params={"rid": "77"}, headers=bearer(reader))
    ).status_code == 201

    # Public: the API description and the probes.
    for path in ("/v1/openapi.json", "/healthz", "/metrics"):
        assert (await client.get(path)).status_code == 200, path

    await _check_listing_and_revocation(settings, system, submitter, reader, admin)


async def test_tokens_file_is_read_and_reloaded(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth.TokensFile, "CHECK_EVERY_SECONDS", 0.0)
    by_digest, by_value = auth.new_token(), auth.new_token()
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(
        json.dumps(
            [
                {"name": "from-secret", "scopes": ["read"], "sha256": auth.token_digest(by_digest)},
                {"name": "plain", "scopes": ["submit"], "token": by_value},
            ]
        )
    )
    settings = make_settings(nats_url, database_url, auth={"required": True, "tokens_file": str(tokens_file)})
    system = await system_factory(settings)
    assert (await system.client.get("/v1/tasks", headers=bearer(by_digest))).status_code == 200
    body = {"rid": "file-1", "items": [{"number": 1, "job": "sum"}]}
    assert (await system.client.post("/v1/requests", json=body, headers=bearer(by_value))).status_code == 202

    # Secrets are updated in place: the removed token stops working, a broken file keeps the last good one.
    tokens_file.write_text(json.dumps([{"name": "plain", "scopes": ["submit"], "token": by_value}]))
    assert (await system.client.get("/v1/tasks", headers=bearer(by_digest))).status_code == 401
    tokens_file.write_text("{not json")
    assert (await system.client.post("/v1/requests", json=body, headers=bearer(by_value))).status_code == 200


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[{", "not JSON"),
        ('[{"name": "x", "scopes": ["root"], "token": "abcdefghijklmnopq"}]', "scopes.0"),
        ('[{"name": "x", "scopes": ["read"]}]', "give sha256 or token"),
        ('[{"name": "x", "scopes": ["read"], "sha256": "beef"}]', "sha256"),
        ('[{"name": "x", "scopes": ["read"], "token": "abcdefghijklmnopq", "admin": true}]', "admin"),
    ],
)
def test_a_bad_tokens_file_is_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(auth.TokensFileError) as caught:
        auth.read_tokens_file(str(path))
    assert problem in str(caught.value) and str(path) in str(caught.value)
    assert "abcdefghijklmnopq" not in str(caught.value)  # a token is never echoed


async def test_rate_limit_per_token(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(nats_url, database_url, auth={"required": True})
    system = await system_factory(settings)
    slow = await create_token(settings, "slow", "read", extra=("--rate", "5", "--burst", "5"))
    other = await create_token(settings, "other", "read")
    answers = [(await system.client.get("/v1/tasks", headers=bearer(slow))) for _ in range(20)]
    codes = [a.status_code for a in answers]
    assert codes[:5] == [200] * 5 and codes.count(429) >= 10, codes
    limited = next(a for a in answers if a.status_code == 429)
    assert_error(limited, 429, "rate_limited", None)
    assert int(limited.headers["Retry-After"]) >= 1
    # Another client is not held back by the first one.
    assert (await system.client.get("/v1/tasks", headers=bearer(other))).status_code == 200
    await asyncio.sleep(float(limited.headers["Retry-After"]))
    assert (await system.client.get("/v1/tasks", headers=bearer(slow))).status_code == 200


async def test_open_mode_limits_per_address(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(nats_url, database_url, auth={"required": False, "anonymous_rate_per_second": 2})
    system = await system_factory(settings)
    codes = [(await system.client.get("/v1/tasks")).status_code for _ in range(10)]
    assert codes[:2] == [200, 200] and codes.count(429) >= 6, codes


async def test_legacy_clients_from_trusted_networks(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(
        nats_url, database_url, auth={"required": True, "legacy_trusted_networks": ["127.0.0.0/8"]}
    )
    system = await system_factory(settings)
    legacy = {"rid": 5, "numbers": [3], "jobtodo": ["sum"]}
    assert (await system.client.post("/number_request", json=legacy)).status_code == 201
    assert (await system.client.get("/number_request", params={"rid": "5"})).status_code == 201
    # Only the old contract: the v1 API still needs a token from the same address.
    assert (await system.client.get("/v1/tasks")).status_code == 401
    # An address outside the networks needs a token (the X-Forwarded-For of a client is not trusted).
    outside = make_settings(
        nats_url, database_url, auth={"required": True, "legacy_trusted_networks": ["10.0.0.0/8"]}
    )
    other = await system_factory(outside)
    headers = {"X-Forwarded-For": "10.1.2.3"}
    assert (await other.client.post("/number_request", json=legacy, headers=headers)).status_code == 401


async def test_connections_over_the_cap_are_refused(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await system_factory(make_settings(nats_url, database_url, gateway={"max_connections": 3}))
    port = int(system.base_url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # The gateway has taken them: each is answered, and stays open (HTTP/1.1 keep-alive).
        for sock in held:
            head = await asyncio.to_thread(_answer_on, sock)
            assert head.startswith(b"HTTP/1.1 200"), head

        def refused_answer() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                chunks = []
                while chunk := extra.recv(4096):  # the gateway closes after answering
                    chunks.append(chunk)
                return b"".join(chunks)

        answer = await asyncio.to_thread(refused_answer)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 2" in head
        assert json.loads(body)["error"]["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()

    async def served() -> Any:
        return (await system.client.get("/healthz")).status_code == 200

    await wait_for(served, timeout=5, what="a connection accepted once the others closed")


def _answer_on(sock: socket.socket) -> bytes:
    """GET /healthz on an open connection; the answer's head, once the whole answer has come."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, received  # the gateway closed the connection instead of answering
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    [length] = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, received
        body += chunk
    return head


async def test_a_gateway_with_a_broken_tokens_file_stops_with_one_clear_line(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text('[{"name": "ci", "scopes": ["read"], "token": "sqt_not_valid_json_here",}]')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")},
        "PYTHONPATH": str(ROOT),
        "SQUALL_NATS_URL": nats_url,
        "SQUALL_DATABASE_URL": database_url,
        "SQUALL_GATEWAY__PORT": "0",
        "SQUALL_AUTH__TOKENS_FILE": str(tokens_file),
        "SQUALL_LOG_FORMAT": "text",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "squall.cli", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr  # logs go to stdout
    assert done.returncode == 1
    assert "tokens file" in output and "not JSON" in output, output
    assert "Traceback" not in output and "sqt_not_valid" not in output
