"""``POST /v1/requests`` is served without Tornado's RequestHandler (the hot path): it must still speak
HTTP/1.1 the way every other route does — headers, keep-alive, HTTP/1.0, clients that go away — and a bug
in it must answer 500 JSON, be logged, and leave the gateway serving."""

from __future__ import annotations

import asyncio
import email.utils
import logging
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from squall.gateway import validation
from tests.integration.harness import LogRecords, System, wait_for

ITEM = {"number": 4, "job": "sum"}


def _port(system: System) -> int:
    return int(system.base_url.rsplit(":", 1)[1])


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status_line, *lines = head.decode("latin1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout=10)
    return int(status_line.split()[1]), headers, body


def _post(body: Any, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    content = orjson.dumps(body)
    return (
        f"POST /v1/requests {version}\r\nHost: squall\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(content)}\r\n{extra}\r\n"
    ).encode() + content


async def test_answers_carry_the_same_headers_as_every_other_route(system: System) -> None:
    accepted = await system.client.post("/v1/requests", json={"rid": "h-1", "items": [ITEM]})
    refused = await system.client.post("/v1/requests", json={"rid": "h-2", "items": [{"number": 1}]})
    elsewhere = await system.client.get("/v1/tasks/not-a-task")  # a RequestHandler route
    assert (accepted.status_code, refused.status_code, elsewhere.status_code) == (202, 422, 404)
    for response in (accepted, refused, elsewhere):
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(response.content)
        assert email.utils.parsedate_to_datetime(response.headers["date"]).tzinfo is not None
        assert "server" not in response.headers  # no version banner on any route
    assert accepted.json()["rid"] == "h-1" and accepted.json()["created"] is True
    assert refused.json()["error"]["field"] == "items[0].job"


async def test_one_connection_carries_many_submissions(system: System) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(system))
    try:
        for n in range(5):
            writer.write(_post({"rid": f"keep-{n}", "items": [ITEM]}))
            status, headers, body = await _read_response(reader)
            assert status == 202 and orjson.loads(body)["rid"] == f"keep-{n}"
            assert headers.get("connection") != "close"
        # A bad submission on the same connection is answered and the connection still serves.
        writer.write(_post({"rid": "keep-bad", "items": []}))
        status, _, body = await _read_response(reader)
        assert status == 422 and orjson.loads(body)["error"]["code"] == "empty"
        writer.write(_post({"rid": "keep-5", "items": [ITEM]}))
        assert (await _read_response(reader))[0] == 202
    finally:
        writer.close()
    assert await system.fetchval("SELECT count(*) FROM requests WHERE rid LIKE 'keep-%'") == 6


async def test_http_1_0_clients_get_their_connection_closed_or_kept_as_asked(system: System) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(system))
    writer.write(_post({"rid": "old-1", "items": [ITEM]}, "HTTP/1.0", "Connection: keep-alive\r\n"))
    status, headers, _ = await _read_response(reader)
    assert status == 202 and headers["connection"].lower() == "keep-alive"
    writer.write(_post({"rid": "old-2", "items": [ITEM]}, "HTTP/1.0"))
    assert (await _read_response(reader))[0] == 202
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed after a plain 1.0 request
    writer.close()


async def test_a_client_that_leaves_does_not_stop_its_submission(system: System, records: LogRecords) -> None:
    """Accepting is the gateway's promise once the request is read: a client that hangs up before the
    answer finds its request recorded when it asks again, and nothing is logged as an error."""
    for n in range(10):
        _, writer = await asyncio.open_connection("127.0.0.1", _port(system))
        writer.write(_post({"rid": f"gone-{n}", "items": [ITEM]}))
        await writer.drain()
        writer.close()

    async def all_recorded() -> bool:
        recorded = "SELECT count(*) FROM requests WHERE rid LIKE 'gone-%' AND recorded_at IS NOT NULL"
        return await system.fetchval(recorded) == 10

    await wait_for(all_recorded, what="the abandoned submissions recorded by the processor")
    assert (
        await system.client.post("/v1/requests", json={"rid": "after", "items": [ITEM]})
    ).status_code == 202
    assert not [r for r in records.records if r.levelno >= logging.ERROR]


async def test_a_bug_answers_500_json_and_the_gateway_keeps_serving(
    system: System, records: LogRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> validation.Submission:
        raise RuntimeError("a bug in the submission parser")

    failed_before = _answered(500)
    monkeypatch.setattr(validation, "parse_submission", broken)
    response = await system.client.post("/v1/requests", json={"rid": "bug", "items": [ITEM]})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal error", "field": None}}
    [logged] = records.find("unhandled error in POST /v1/requests")
    assert logged.exc_info is not None and "a bug in the submission parser" in str(logged.exc_info[1])
    monkeypatch.undo()
    assert (await system.client.post("/v1/requests", json={"rid": "bug", "items": [ITEM]})).status_code == 202
    assert await system.fetchval("SELECT count(*) FROM requests") == 1
    assert _answered(500) == failed_before + 1  # counted under its route, like any answer


def _answered(status: int) -> float:
    """``squall_http_requests_total`` of POST /v1/requests with this status (the registry is per process)."""
    value = REGISTRY.get_sample_value(
        "squall_http_requests_total", {"route": "/v1/requests", "method": "POST", "code": str(status)}
    )
    return value or 0.0
