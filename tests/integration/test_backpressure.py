"""Back-pressure: a full stream, or a backlog over its limit, refuses new work (503 with Retry-After) and
keeps nothing half-written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

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


async def _backlog(system: System) -> int:
    response = await system.client.get("/v1/stats")
    assert response.status_code == 200
    return int(response.json()["backlog"]["items"])


async def _held(system: System, outcome: str) -> float:
    response = await system.client.get("/metrics")
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "squall_admission_held_total" and sample.labels == {"outcome": outcome}:
                return float(sample.value)
    return 0.0


async def test_over_the_backlog_limit_submissions_wait_then_get_503(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """Batch items wait for a scheduler that is not running: the backlog grows to the limit; a submission
    then waits and is refused (nothing written), and one waiting when the scheduler starts is accepted."""
    wait = 6.0
    settings = make_settings(
        nats_url, database_url, gateway={"max_backlog_items": 5, "admission_wait_seconds": wait}
    )
    system = await system_factory(settings)

    def body(rid: str) -> dict[str, object]:
        return {"rid": rid, "items": [{"number": n, "job": "sum"} for n in range(3)]}

    await system.submit(body("first"))
    await wait_for(lambda: _at_least(system, 3), what="3 items in the backlog")
    await system.submit(body("second"))  # 3 < 5: admitted, and the backlog passes the limit
    await wait_for(lambda: _at_least(system, 6), what="6 items in the backlog")

    refused_before = await _held(system, "refused")
    started = time.monotonic()
    response = await system.client.post("/v1/requests", json=body("third"))
    held_for = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "overloaded"
    assert response.headers["Retry-After"]
    assert held_for >= wait - 0.5
    assert await system.fetchval("SELECT count(*) FROM requests WHERE rid = 'third'") == 0
    assert await _held(system, "refused") == refused_before + 1

    # Held now; the scheduler starts, the backlog is processed, and the same submission goes through.
    admitted_before = await _held(system, "admitted")
    reads = _count_backlog_reads(system)
    held = asyncio.create_task(system.client.post("/v1/requests", json=body("third")))
    # Two reads of the backlog: the submission found it over the limit and waits to look again.
    await wait_for(lambda: _at_least_reads(reads, 2), timeout=5, what="the submission held")
    assert reads[0] >= 5 and not held.done(), reads
    await system.start_scheduler()
    response = await held
    assert response.status_code == 202, response.text
    assert await _held(system, "admitted") == admitted_before + 1
    await system.wait_processed("third")


async def _at_least(system: System, items: int) -> bool:
    return await _backlog(system) >= items


def _count_backlog_reads(system: System) -> list[int]:
    """From now on, every backlog reading of the gateway's admission control: the backlog each one saw."""
    admission = system.app.intake.admission
    read = admission._backlog
    seen: list[int] = []

    async def counted() -> int:
        backlog = await read()
        seen.append(backlog)
        return backlog

    admission._backlog = counted
    return seen


async def _at_least_reads(seen: list[int], count: int) -> bool:
    return len(seen) >= count
