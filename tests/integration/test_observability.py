"""The observability metrics move with real work, and a client's trace reaches the processor's logs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from squall.core import broker
from squall.core.db import create_engine
from squall.core.lifecycle import Resources
from squall.core.logs import JsonFormatter
from squall.processor.worker import Processor
from tests.integration import effect_processings
from tests.integration.harness import LogRecords, System, make_settings, wait_for
from tests.integration.test_stats import scrape

MODULE = "tests.integration.effect_processings"


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_queue_depths_show_a_backlog_and_its_drain(system: System) -> None:
    await system.stop_processors()
    for rid in range(7):
        await system.submit({"rid": rid, "items": [{"number": rid, "job": "sum"}]})
    # A processor that samples but does not consume (its loops are not running).
    nc = await broker.connect(system.settings, "sampler")
    system.stack.push_async_callback(nc.close)
    sampler = Processor(system.settings, Resources("sampler", system.registry, system.engine, nc))
    assert await sampler.queue_depths.sample_queues()
    samples = await scrape(system)
    assert value(samples, "squall_queue_pending_messages", consumer="processor-requests") == 7
    assert value(samples, "squall_queue_ack_pending_messages", consumer="processor-requests") == 0
    assert value(samples, "squall_queue_pending_messages", consumer="processor-tasks") == 0

    await system.start_processor()

    async def drained() -> bool:
        await sampler.queue_depths.sample_queues()
        samples = await scrape(system)
        return value(samples, "squall_queue_pending_messages", consumer="processor-requests") == 0

    await wait_for(drained, what="the request queue drained")


async def test_queue_sampling_failure_keeps_the_processor_working(system: System) -> None:
    nc = await broker.connect(system.settings, "sampler")
    sampler = Processor(system.settings, Resources("sampler", system.registry, system.engine, nc))
    await nc.close()  # every consumer-info request now fails
    assert await sampler.queue_depths.sample_queues() is False
    await system.submit({"rid": "after", "items": [{"number": 1, "job": "square"}]})
    await system.start_scheduler()
    await system.wait_processed("after")


async def test_end_to_end_histogram_counts_each_processed_request(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    modes = {"square": {"mode": "immediate"}}
    system = await system_factory(make_settings(nats_url, database_url, processings=modes))
    before = await scrape(system)
    for rid in range(5):
        await system.submit({"rid": f"e2e-{rid}", "items": [{"number": rid, "job": "square"}]})
    await system.submit({"rid": "batch", "items": [{"number": 1, "job": "sum"}]})
    for rid in range(5):
        await system.wait_processed(f"e2e-{rid}")
    await system.start_scheduler()
    await system.wait_processed("batch")
    after = await scrape(system)
    name = "squall_request_end_to_end_seconds_count"
    assert value(after, name, processing="square") - value(before, name, processing="square") == 5
    assert value(after, name, processing="sum") - value(before, name, processing="sum") == 1
    # Acceptance to processed takes a positive time, under the histogram's top bucket.
    total = value(after, "squall_request_end_to_end_seconds_sum", processing="square") - value(
        before, "squall_request_end_to_end_seconds_sum", processing="square"
    )
    assert 0 < total < 5 * 300


async def test_db_pool_gauge_counts_connections_in_use(system: System) -> None:
    """The gauge sums every pool of the process (the main one, the hot statements' one, and this one)."""
    await system.stop_processors()  # nothing else takes connections between the scrapes
    engine = create_engine(system.settings, pool_size=3)
    system.stack.push_async_callback(engine.dispose)
    name = "squall_db_pool_connections"
    async with engine.connect() as first, engine.connect():
        await first.execute(text("SELECT 1"))
        held = await scrape(system)
    released = await scrape(system)
    assert value(held, name, state="in_use") - value(released, name, state="in_use") == 2
    assert value(released, name, state="idle") - value(held, name, state="idle") == 2


async def test_the_clients_traceparent_reaches_the_processors_log(
    system: System, records: LogRecords
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    header = f"00-{trace_id}-00f067aa0ba902b7-01"
    response = await system.client.post(
        "/v1/requests",
        json={"rid": "traced", "items": [{"number": 2, "job": "sum"}]},
        headers={"traceparent": header},
    )
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    # Another request without a trace gets a trace of its own.
    await system.submit({"rid": "untraced", "items": [{"number": 3, "job": "sum"}]})

    def recorded(rid: str) -> list[logging.LogRecord]:
        return [
            r
            for r in records.records
            if r.name == "squall.processor"
            and r.getMessage().startswith("request recorded")
            and r.__dict__.get("rid") == rid
        ]

    async def both_recorded() -> bool:
        return bool(recorded("traced")) and bool(recorded("untraced"))

    await wait_for(both_recorded, what="the processor's log records")
    (record,) = recorded("traced")
    assert record.__dict__["trace_id"] == trace_id
    assert record.__dict__["task_id"] == task_id
    assert record.__dict__["span_id"] != "00f067aa0ba902b7"  # the processor's own span
    line = JsonFormatter("processor").format(record)
    assert f'"trace_id":"{trace_id}"' in line and '"rid":"traced"' in line and '"service":"processor"' in line
    (other,) = recorded("untraced")
    assert len(other.__dict__["trace_id"]) == 32 and other.__dict__["trace_id"] != trace_id
    # The gateway logged the acceptance within the same trace.
    accepted = [
        r for r in records.records if r.getMessage() == "request accepted" and r.__dict__["rid"] == "traced"
    ]
    assert accepted and accepted[0].__dict__["trace_id"] == trace_id


async def test_a_replays_trace_reaches_the_poll_tasks_log(
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
    records: LogRecords,
) -> None:
    effect_processings.REFUSE_ONCE_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit({"rid": "r", "items": [{"number": 1, "job": "refuse_once"}]})
    await wait_for(lambda: system.fetchval("SELECT count(*) FROM all_items"), what="recorded")
    task_id = await system.publish_poll("refuse_once", batch_size=10)
    await wait_for(
        lambda: system.fetchval("SELECT state = 'dead' FROM tasks WHERE id = $1", task_id), what="dead"
    )
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    replay = await system.client.post(
        f"/v1/tasks/{task_id}/retry", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    )
    assert replay.status_code == 202
    await system.wait_processed("r")

    async def logged() -> list[logging.LogRecord]:
        return [
            r
            for r in records.records
            if r.getMessage() == "processed 1 item(s)" and r.__dict__.get("trace_id") == trace_id
        ]

    (record,) = await wait_for(logged, what="the replayed poll task's log line")
    assert record.__dict__["task_id"] == str(task_id)
    assert record.__dict__["processing"] == "refuse_once"
    assert record.__dict__["attempt"] == 1
