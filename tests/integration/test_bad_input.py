"""Bad input gets a clear 4xx with {"error": {"code", "message", "field"}}: never a 500, never HTML."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from squall.cli.embedded import NatsServer, PostgresServer
from tests.integration.harness import System, make_settings, wait_for


def _error(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]  # type: ignore[no-any-return]


ITEM = {"number": 1, "job": "sum"}


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"items": [{"number": 1, "job": "nope"}]}, 422, "unknown_job", "items[0].job"),
        ({"items": [{"number": 2**63, "job": "sum"}]}, 422, "out_of_range", "items[0].number"),
        ({"items": [{"number": -(2**63) - 1, "job": "sum"}]}, 422, "out_of_range", "items[0].number"),
        ({"items": [{"number": 1.5, "job": "sum"}]}, 422, "invalid_type", "items[0].number"),
        ({"items": [{"number": True, "job": "sum"}]}, 422, "invalid_type", "items[0].number"),
        ({"items": [{"number": "1", "job": "sum"}]}, 422, "invalid_type", "items[0].number"),
        ({"items": [{"job": "sum"}]}, 422, "missing_field", "items[0].number"),
        ({"items": [{"number": 1, "job": "sum", "extra": 1}]}, 422, "unknown_field", "items[0].extra"),
        ({"items": [ITEM], "priority": 1}, 422, "unknown_field", "priority"),
        ({"items": []}, 422, "empty", "items"),
        ({"items": "many"}, 422, "invalid_type", "items"),
        ({"rid": 1}, 422, "missing_field", "items"),
        ({"rid": True, "items": [ITEM]}, 422, "invalid_type", "rid"),
        ({"rid": "", "items": [ITEM]}, 422, "invalid_rid", "rid"),
        ({"rid": "a" * 129, "items": [ITEM]}, 422, "invalid_rid", "rid"),
        ({"rid": "../etc/passwd", "items": [ITEM]}, 422, "invalid_rid", "rid"),
        ({"rid": 2**70, "items": [ITEM]}, 422, "out_of_range", "rid"),
        ([ITEM], 422, "invalid_type", "body"),
        ({"items": [ITEM] * 10_001}, 413, "too_many_items", "items"),
    ],
)
async def test_invalid_submissions(system: System, body: Any, status: int, code: str, field: str) -> None:
    response = await system.client.post("/v1/requests", json=body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert (error["code"], error["field"]) == (code, field)


async def test_unknown_job_names_the_known_ones(system: System) -> None:
    error = _error(await system.client.post("/v1/requests", json={"items": [{"number": 1, "job": "nope"}]}))
    assert "mul" in error["message"] and "sum" in error["message"] and "square" in error["message"]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[" * 40 + b"]" * 40, 400, "too_deep"),
        # Too deep where a field is expected: refused as too deep, not as the field's type (the depth is
        # checked once the fields are refused).
        (b'{"items": [{"number": 1, "job": "sum"}], "rid": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "too_deep"),
        (b'{"items": [{"number": 1, "job": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}]}", 400, "too_deep"),
        (
            b'{"items": [{"number": 1, "job": "sum"}], "extra": ' + b"[" * 33 + b"]" * 33 + b"}",
            400,
            "too_deep",
        ),
    ],
)
@pytest.mark.parametrize("route", ["/v1/requests", "/number_request"])
async def test_malformed_bodies(system: System, route: str, content: bytes, status: int, code: str) -> None:
    response = await system.client.post(route, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert _error(response)["code"] == code


async def test_body_over_the_byte_limit_is_413(system: System) -> None:
    limit = system.settings.gateway.max_body_bytes
    content = b'{"items": [' + b" " * limit + b"]}"
    response = await system.client.post(
        "/v1/requests", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert _error(response)["code"] == "body_too_large"


async def test_wrong_content_type_is_415(system: System) -> None:
    response = await system.client.post(
        "/v1/requests", content=b'{"items": []}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert _error(response)["field"] == "Content-Type"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1", 404),
        ("POST", "/v1/tasks/x", 405),
        ("DELETE", "/v1/requests", 405),
        ("PUT", "/number_request", 405),
        ("GET", "/v1/requests", 405),
    ],
)
async def test_unknown_routes_and_methods_answer_json(
    system: System, method: str, path: str, status: int
) -> None:
    response = await system.client.request(method, path)
    assert response.status_code == status
    assert _error(response)["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


async def test_nothing_was_stored_by_refused_requests(system: System) -> None:
    await system.client.post("/v1/requests", json={"rid": "bad", "items": [{"number": 1, "job": "nope"}]})
    assert await system.fetchval("SELECT count(*) FROM requests") == 0
    assert await system.fetchval("SELECT count(*) FROM tasks") == 0


async def test_nats_unreachable_answers_503_with_retry_after(
    system: System, nats_server: NatsServer | None
) -> None:
    if nats_server is None:
        pytest.fail("this test stops its own NATS server; run it without --nats-url")
    nats_server.stop()
    response = await system.client.post("/v1/requests", json={"rid": "later", "items": [ITEM]})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert _error(response)["code"] == "unavailable"
    ready = await system.client.get("/readyz")
    assert ready.status_code == 503 and "nats: not connected" in ready.json()["problems"]
    # Nothing half-written: the refused request left no trace, and the same rid works once NATS is back.
    assert await system.fetchval("SELECT count(*) FROM requests") == 0
    nats_server.start()

    async def accepted() -> bool:
        retry = await system.client.post("/v1/requests", json={"rid": "later", "items": [ITEM]})
        return retry.status_code == 202

    await wait_for(accepted, what="accepted after NATS came back")


async def test_postgres_unreachable_answers_503_with_retry_after(
    nats_url: str, own_postgres: PostgresServer, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """A lost database is a 503 with Retry-After (not a 500), and the pooled connections it left dead are
    replaced once it is back: the same rid is accepted and processed."""
    system = await system_factory(
        make_settings(nats_url, own_postgres.url, processings={"sum": {"mode": "immediate"}})
    )
    await system.submit({"rid": "before", "items": [ITEM]})
    own_postgres.stop()
    try:
        for rid in ("during-1", "during-2"):
            response = await system.client.post("/v1/requests", json={"rid": rid, "items": [ITEM]})
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]
            assert _error(response)["code"] == "unavailable"
    finally:
        own_postgres.start()

    async def accepted() -> bool:
        retry = await system.client.post("/v1/requests", json={"rid": "during-1", "items": [ITEM]})
        return retry.status_code == 202

    await wait_for(accepted, what="accepted after PostgreSQL came back")

    async def processed() -> bool:  # a pool's first call after the restart may still find a dead connection
        state = await system.client.get("/v1/requests/during-1")
        assert state.status_code in (200, 503), state.text
        return state.status_code == 200 and state.json()["processed"]

    await wait_for(processed, what="processed after PostgreSQL came back")


async def test_slow_clients_are_cut_off(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """A client that trickles its headers, or its body, or idles between requests loses the connection at
    its deadline (each its own: headers 1 s, body 3 s); a client that keeps sending requests keeps its
    connection, and the gateway answers everyone else meanwhile."""
    settings = make_settings(
        nats_url, database_url, gateway={"header_timeout_seconds": 1.0, "body_timeout_seconds": 3.0}
    )
    system = await system_factory(settings, processors=0)
    port = int(system.base_url.rsplit(":", 1)[1])

    async def answer(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return head + await reader.readexactly(length)

    async def cut_off_after(first: bytes, requests: int = 0) -> float:
        """Seconds from the last thing sent until the gateway closed the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):  # complete requests, a little apart, on one keep-alive connection
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await answer(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.4)
        writer.write(first)
        await writer.drain()
        started = time.monotonic()
        closed = await asyncio.wait_for(reader.read(), timeout=10)  # b"" (or an error page) once cut off
        writer.close()
        assert isinstance(closed, bytes)
        return time.monotonic() - started

    slow_headers = asyncio.create_task(cut_off_after(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\n"))
    slow_body = asyncio.create_task(
        cut_off_after(
            b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"items": ['
        )
    )
    # Eight requests 0.4 s apart: 3 s on one connection, three times the header deadline, then idle.
    idle_after_work = asyncio.create_task(cut_off_after(b"", requests=8))
    # Others are served while the slow clients hang on.
    assert (await system.client.get("/healthz")).status_code == 200
    assert 0.9 < await slow_headers < 2.9
    assert 2.9 < await slow_body < 6
    assert 0.5 < await idle_after_work < 2.9
