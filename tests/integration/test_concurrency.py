"""Several processors share one backlog: no item is claimed or computed twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import nats
import pytest
from prometheus_client import REGISTRY

from squall.cli.embedded import free_port
from squall.core import broker, events
from squall.core.http import start_ops_server
from squall.core.lifecycle import Resources
from squall.core.store import intake
from squall.processor.worker import Processor
from tests.integration import effect_processings
from tests.integration.harness import System, make_settings, plain_dsn, wait_for

MODULE = "tests.integration.effect_processings"


@pytest.mark.parametrize("job", ["record", "record_locked"])
async def test_two_processors_drain_one_backlog_once(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]], job: str
) -> None:
    effect_processings.RECORDED.clear()
    settings = make_settings(nats_url, database_url, processing_modules=[MODULE])
    system = await system_factory(settings, processors=2)
    requests, per_request = 40, 50
    await asyncio.gather(
        *(
            system.submit(
                {
                    "rid": f"r{r}",
                    "items": [{"number": r * 1000 + i, "job": job} for i in range(per_request)],
                }
            )
            for r in range(requests)
        )
    )
    total = requests * per_request

    async def recorded() -> bool:
        return await system.recorded_items() == total

    await wait_for(recorded, what="all items recorded")
    # Many more poll tasks than needed, published at once: processors race for the same items.
    await asyncio.gather(*(system.publish_poll(job, batch_size=100) for _ in range(40)))

    async def all_processed() -> bool:
        return await system.fetchval("SELECT count(*) FROM requests WHERE processed") == requests

    await wait_for(all_processed, timeout=60, what="every request processed")
    computed = Counter(effect_processings.RECORDED)
    assert len(computed) == total
    assert max(computed.values()) == 1, [n for n, c in computed.items() if c > 1][:10]
    rows = await system.fetch("SELECT number, state, result, attempts FROM all_items")
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in rows)
    assert all(r["result"] == str(r["number"] + 1) for r in rows)
    # Both processors took part (each poll task is recorded with the items it processed).
    busy = await system.fetchval("SELECT count(*) FROM tasks WHERE kind = 'poll' AND items_processed > 0")
    assert busy >= 2


async def test_redelivered_request_event_records_items_once(system: System) -> None:
    """The gateway re-publishes an unrecorded identical re-submission; items must still be recorded once."""
    body = {"rid": "twice", "items": [{"number": n, "job": "sum"} for n in range(10)]}
    await system.stop_processors()
    await system.submit(body, expect=202)
    await system.submit(body, expect=200)  # re-published while not recorded
    await system.start_processor()
    await system.start_processor()

    async def recorded() -> bool:
        return bool((await system.request_state("twice"))["recorded"])

    await wait_for(recorded, what="recorded")
    await wait_for(lambda: _requests_consumed(system), what="both events consumed")
    assert await system.recorded_items() == 10
    assert await system.fetchval("SELECT attempts FROM tasks WHERE kind = 'request'") == 1


async def _requests_consumed(system: System) -> bool:
    """Every request event in the stream was delivered and acknowledged: whatever a copy could have done
    (record again, fail a batch), it has done it."""
    nc = await nats.connect(system.settings.nats_url)
    try:
        info = await nc.jetstream().consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_duplicate_events_in_one_fetch_record_once(system: System) -> None:
    """Copies of one event beyond the de-duplication window may arrive in the same fetched batch."""
    await system.stop_processors()
    await system.submit({"rid": "dup", "items": [{"number": n, "job": "sum"} for n in range(5)]})
    payload = await system.fetchval("SELECT payload FROM requests WHERE rid = 'dup'")
    nc = await nats.connect(system.settings.nats_url)
    try:
        for copy in range(3):
            await nc.jetstream().publish(
                events.REQUEST_SUBMITTED, payload, headers={"Nats-Msg-Id": f"copy-{copy}"}
            )
    finally:
        await nc.close()
    redeliveries = REGISTRY.get_sample_value("squall_task_redeliveries_total", {"kind": "request"}) or 0.0
    await system.start_processor()

    async def recorded() -> bool:
        return bool((await system.request_state("dup"))["recorded"])

    await wait_for(recorded, what="recorded")
    await wait_for(lambda: _requests_consumed(system), what="every copy consumed")
    assert await system.recorded_items() == 5
    # Recorded in the first attempt: the copies did not make the batch's transaction fail.
    after = REGISTRY.get_sample_value("squall_task_redeliveries_total", {"kind": "request"}) or 0.0
    assert after == redeliveries


async def test_accepted_request_whose_event_was_never_published_is_recovered(system: System) -> None:
    """The gateway died between recording an acceptance and publishing it: a processor re-publishes it."""
    event = events.RequestSubmitted(
        task_id=uuid.uuid4(), rid="orphan", items=[events.Item(number=5, job="mul")]
    )
    submitted = intake.Submitted.of_event(event, False, event.model_dump_json().encode())
    [accepted] = await intake.accept_requests(system.engine, [submitted])
    assert isinstance(accepted, intake.Accepted) and accepted.created
    processor = system.processors[0].processor
    assert await processor.sweep.republish_lost(older_than_seconds=0) == 1
    await system.start_scheduler()
    state = await system.wait_processed("orphan")
    assert state["items"][0]["result"] == 10
    assert await processor.sweep.republish_lost(older_than_seconds=0) == 0  # nothing left to recover


async def test_no_republish_while_the_queue_has_a_backlog(system: System) -> None:
    """An unrecorded request may simply be waiting in the queue: never duplicate a backlog."""
    await system.stop_processors()
    await system.submit({"rid": "queued", "items": [{"number": 1, "job": "sum"}]})
    nc = await broker.connect(system.settings, "idle")
    try:
        idle = Processor(
            system.settings, Resources("idle", system.registry, system.engine, nc)
        )  # not consuming
        assert await idle.sweep.republish_lost(older_than_seconds=0) == 0
    finally:
        await nc.close()


async def test_a_stuck_batch_makes_the_processor_not_ready(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(nats_url, database_url, processor={"stall_seconds": 1.0})
    system = await system_factory(settings, processors=0)
    await system.submit({"rid": "stuck", "items": [{"number": 1, "job": "sum"}]})
    blocker = await asyncpg.connect(plain_dsn(database_url))
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM requests WHERE rid = 'stuck' FOR UPDATE")
        processor = await system.start_processor()

        async def stalled() -> list[str]:
            return [p for p in await processor.problems() if p.startswith("stalled")]

        port = free_port()
        ops = start_ops_server(port, processor.problems, "127.0.0.1", processor.stalls)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            assert (await probe.get("/healthz")).status_code == 200
            await wait_for(stalled, timeout=15, what="readiness to report the stuck batch")
            # Liveness fails too: Kubernetes restarts a stuck processor instead of leaving it "healthy".
            for path in ("/healthz", "/readyz"):
                answer = await probe.get(path)
                assert answer.status_code == 503 and answer.json()["problems"][0].startswith("stalled"), path
            await lock.rollback()  # the lock goes: the batch completes, the processor is ready again

            async def ready() -> bool:
                return await processor.problems() == []

            await wait_for(ready, what="ready again")
            assert (await probe.get("/healthz")).status_code == 200
        ops.stop()
        assert (await system.request_state("stuck"))["recorded"] is True
    finally:
        await blocker.close()


def _submitted(rid: str, numbers: list[int]) -> intake.Submitted:
    event = events.RequestSubmitted(
        task_id=uuid.uuid4(), rid=rid, items=[events.Item(number=n, job="mul") for n in numbers]
    )
    return intake.Submitted.of_event(event, False, event.model_dump_json().encode())


async def test_one_intake_statement_sorts_new_repeated_and_conflicting_rids(system: System) -> None:
    """Group commit: a batch holding a rid twice (same items), a clash (other items) and an earlier rid
    answers each as if it had been written alone."""
    [earlier] = await intake.accept_requests(system.engine, [_submitted("earlier", [1])])
    assert isinstance(earlier, intake.Accepted)
    batch = [
        _submitted("a", [1, 2]),
        _submitted("a", [1, 2]),
        _submitted("a", [9]),
        _submitted("b", [3]),
        _submitted("earlier", [1]),
        _submitted("earlier", [2]),
    ]
    a, a_again, a_clash, b, earlier_again, earlier_clash = await intake.accept_requests(system.engine, batch)
    assert isinstance(a, intake.Accepted) and a.created and a.task_id == batch[0].task_id
    assert isinstance(a_again, intake.Accepted) and not a_again.created and a_again.task_id == a.task_id
    assert a_again.payload == batch[0].payload  # the first one's event, to publish again
    assert isinstance(a_clash, intake.RidConflict)
    assert isinstance(b, intake.Accepted) and b.created
    assert isinstance(earlier_again, intake.Accepted) and earlier_again.task_id == earlier.task_id
    assert not earlier_again.created
    assert isinstance(earlier_clash, intake.RidConflict)
    assert await system.fetchval("SELECT count(*) FROM requests") == 3
    assert await system.fetchval("SELECT count(*) FROM tasks WHERE kind = 'request'") == 3


async def test_concurrent_submissions_share_intake_statements(system: System) -> None:
    """Many clients at once: fewer statements than requests, and each client gets its own answer."""
    before_sum = REGISTRY.get_sample_value("squall_intake_batch_requests_sum") or 0.0
    before_count = REGISTRY.get_sample_value("squall_intake_batch_requests_count") or 0.0
    bodies = [{"rid": f"r{n}", "items": [{"number": n, "job": "mul"}]} for n in range(40)]
    bodies += [{"rid": "twice", "items": [{"number": 5, "job": "mul"}]}] * 4
    responses = await asyncio.gather(*(system.client.post("/v1/requests", json=b) for b in bodies))
    codes = Counter(r.status_code for r in responses)
    assert codes == {202: 41, 200: 3}, codes
    assert len({r.json()["task_id"] for r in responses[40:]}) == 1
    statements = (REGISTRY.get_sample_value("squall_intake_batch_requests_count") or 0.0) - before_count
    assert (REGISTRY.get_sample_value("squall_intake_batch_requests_sum") or 0.0) - before_sum == 44
    assert statements < 44
    await system.start_scheduler()
    for n in range(40):
        assert (await system.wait_processed(f"r{n}"))["items"][0]["result"] == 2 * n


async def test_immediate_items_are_counted_once_whatever_copies_of_their_event_arrive(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """squall_items_processed_total counts the items a recording wrote: copies of the event in the same
    batch, or arriving after the request was recorded, add nothing."""
    settings = make_settings(nats_url, database_url, processings={"sum": {"mode": "immediate"}})
    system = await system_factory(settings)
    await system.stop_processors()
    await system.submit({"rid": "counted", "items": [{"number": n, "job": "sum"} for n in range(5)]})
    payload = await system.fetchval("SELECT payload FROM requests WHERE rid = 'counted'")

    async def publish_copies(*ids: str) -> None:
        nc = await nats.connect(system.settings.nats_url)
        try:
            for msg_id in ids:
                await nc.jetstream().publish(
                    events.REQUEST_SUBMITTED, payload, headers={"Nats-Msg-Id": msg_id}
                )
        finally:
            await nc.close()

    def done() -> float:
        return (
            REGISTRY.get_sample_value(
                "squall_items_processed_total", {"processing": "sum", "outcome": "done"}
            )
            or 0.0
        )

    before = done()
    await publish_copies("copy-0", "copy-1")
    await system.start_processor()
    await system.wait_processed("counted")
    assert done() - before == 5
    await publish_copies("copy-late")  # recorded already: acked, nothing written or counted

    await wait_for(lambda: _requests_consumed(system), what="the late copy consumed")
    assert done() - before == 5
    assert await system.recorded_items() == 5
