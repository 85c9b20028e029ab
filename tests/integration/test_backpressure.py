"""A full stream refuses new work: the gateway answers 503 with Retry-After and keeps nothing half-written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.integration.harness import System, make_settings, wait_for


async def test_full_stream_answers_503_and_leaves_no_trace(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(nats_url, database_url, nats={"stream_max_bytes": 64 * 1024})
    system = await system_factory(settings, processors=0)  # nobody drains the queue
    accepted: list[str] = []
    refused = None
    for index in range(500):
        body = {"rid": f"b{index}", "items": [{"number": n, "job": "sum"} for n in range(20)]}
        response = await system.client.post("/v1/requests", json=body)
        if response.status_code == 503:
            refused = (f"b{index}", response)
            break
        assert response.status_code == 202, response.text
        accepted.append(f"b{index}")
    assert refused is not None, "the stream never filled up"
    rid, response = refused
    assert response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "unavailable"
    # The refused request was withdrawn; every accepted one is still there, waiting.
    rids = {r["rid"] for r in await system.fetch("SELECT rid FROM requests")}
    assert rids == set(accepted)
    assert rid not in rids
    # Once a processor drains the queue, the same request is accepted.
    await system.start_processor()

    async def drained() -> bool:
        return await system.fetchval("SELECT count(*) FROM requests WHERE recorded_at IS NULL") == 0

    await wait_for(drained, what="the queue drained")
    again = await system.client.post(
        "/v1/requests", json={"rid": rid, "items": [{"number": n, "job": "sum"} for n in range(20)]}
    )
    assert again.status_code == 202
