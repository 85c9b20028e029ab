"""Submit → JetStream → processor → PostgreSQL, in batch and immediate mode, for every built-in processing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import nats
import orjson
import pytest

from squall.core import events
from squall.core.settings import Settings
from squall.core.store import intake
from squall.gateway import validation
from squall.gateway.intake import OUTBOX_BYTES
from tests.integration.harness import System, make_settings, wait_for

EXPECTED = {"sum": lambda n: n + 2, "mul": lambda n: n * 2, "square": lambda n: n * n}
NUMBERS = [4, 9, -3, 0, 2**40, 2**63 - 1, -(2**63)]  # results beyond 64 bits too


def _items() -> list[dict[str, object]]:
    return [{"number": n, "job": job} for job in EXPECTED for n in NUMBERS]


def _check_results(state: dict[str, object]) -> None:
    items = state["items"]
    assert isinstance(items, list)
    assert [(i["number"], i["job"]) for i in items] == [(i["number"], i["job"]) for i in _items()]
    for item in items:
        assert item["state"] == "done", item
        assert item["result"] == EXPECTED[item["job"]](item["number"]), item
    assert state["counts"] == {"pending": 0, "done": len(items), "failed": 0}


async def test_batch_mode_processes_through_poll_tasks(system: System) -> None:
    accepted = await system.submit({"rid": "batch-1", "items": _items()})
    state = await system.request_state("batch-1")
    assert state["processed"] is False
    await system.start_scheduler()
    _check_results(await system.wait_processed("batch-1"))
    task = (await system.client.get(f"/v1/tasks/{accepted['task_id']}")).json()
    assert task["state"] == "succeeded" and task["kind"] == "request" and task["rid"] == "batch-1"
    # Poll tasks are tasks too, with their own state.
    polls = await system.fetch("SELECT id, state, items_processed FROM tasks WHERE kind = 'poll'")
    assert polls and sum(p["items_processed"] for p in polls) == len(_items())
    poll = (await system.client.get(f"/v1/tasks/{polls[0]['id']}")).json()
    assert poll["kind"] == "poll" and poll["state"] == "succeeded" and poll["rid"] is None


async def test_batch_items_wait_as_pending_until_polled(system: System) -> None:
    await system.submit({"rid": 7, "items": [{"number": 1, "job": "sum"}]})

    async def recorded() -> bool:
        return bool((await system.request_state(7))["recorded"])

    await wait_for(recorded, what="recorded")
    state = await system.request_state(7)
    assert state["items"][0]["state"] == "pending" and state["processed"] is False
    await system.publish_poll("sum", batch_size=10)
    state = await system.wait_processed(7)
    assert state["items"][0]["result"] == 3
    assert state["rid"] == 7  # an integer rid comes back as an integer


async def test_immediate_mode_needs_no_poll_task(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    modes = {name: {"mode": "immediate"} for name in EXPECTED}
    system = await system_factory(make_settings(nats_url, database_url, processings=modes))
    await system.submit({"rid": "now-1", "items": _items()})
    _check_results(await system.wait_processed("now-1"))
    assert await system.fetchval("SELECT count(*) FROM tasks WHERE kind = 'poll'") == 0
    assert await system.fetchval("SELECT min(attempts) FROM all_items") == 1


async def test_resubmission_is_idempotent_and_conflict_is_409(system: System) -> None:
    body = {"rid": "same", "items": [{"number": 1, "job": "mul"}, {"number": 2, "job": "sum"}]}
    first = await system.submit(body, expect=202)
    assert first["created"] is True
    again = await system.submit(body, expect=200)
    assert again["task_id"] == first["task_id"] and again["created"] is False
    other = await system.client.post("/v1/requests", json={**body, "items": [{"number": 1, "job": "sum"}]})
    assert other.status_code == 409
    assert other.json()["error"] == {
        "code": "rid_conflict",
        "message": "this rid was submitted before with other items",
        "field": "rid",
    }
    await system.start_scheduler()
    await system.wait_processed("same")
    # After processing, the identical submission still answers the same task; items recorded once.
    later = await system.submit(body, expect=200)
    assert later["task_id"] == first["task_id"]
    assert await system.fetchval("SELECT count(*) FROM all_items") == 2
    # An integer rid and the same digits as a string are one request.
    await system.submit({"rid": 42, "items": [{"number": 1, "job": "sum"}]}, expect=202)
    await system.submit({"rid": "42", "items": [{"number": 1, "job": "sum"}]}, expect=200)


async def test_just_submitted_task_resolves_before_any_processor(
    settings: Settings, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await system_factory(settings, processors=0)
    accepted = await system.submit({"items": [{"number": 5, "job": "sum"}]})
    rid = accepted["rid"]
    assert isinstance(rid, str) and uuid.UUID(rid)  # assigned by the gateway
    task = await system.client.get(f"/v1/tasks/{accepted['task_id']}")
    assert task.status_code == 200
    body = task.json()
    assert body["state"] == "queued" and body["kind"] == "request" and body["rid"] == rid
    assert set(body) >= {"task_id", "kind", "state", "attempts", "created_at", "updated_at", "error", "rid"}
    state = await system.request_state(rid)
    assert state["recorded"] is False and state["items"][0]["state"] == "pending"
    # A processor started later picks the request up from the durable stream.
    await system.start_processor()

    async def recorded() -> bool:
        return bool((await system.request_state(rid))["recorded"])

    await wait_for(recorded, what="recorded by a late processor")
    assert (await system.client.get(f"/v1/tasks/{accepted['task_id']}")).json()["state"] == "succeeded"


@pytest.mark.parametrize("path", ["/v1/tasks/not-a-uuid", f"/v1/tasks/{uuid.uuid4()}", "/v1/requests/nope"])
async def test_unknown_ids_are_404(system: System, path: str) -> None:
    response = await system.client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_health_readiness_and_metrics(system: System) -> None:
    assert (await system.client.get("/healthz")).json() == {"status": "ok"}
    assert (await system.client.get("/readyz")).json() == {"status": "ready"}
    await system.submit({"rid": "m", "items": [{"number": 1, "job": "sum"}]})
    metrics = (await system.client.get("/metrics")).text
    assert 'squall_http_requests_total{code="202",method="POST",route="/v1/requests"}' in metrics
    assert 'squall_events_published_total{outcome="ok",subject="squall.requests.submitted"}' in metrics
    assert "squall_build_info{" in metrics


async def test_a_malformed_request_event_is_dropped_and_the_next_recorded(system: System) -> None:
    """An event that breaks the contract (here: an item without a job) is terminated, not redelivered
    forever, and does not hold up the events after it."""
    nc = await nats.connect(system.settings.nats_url)
    try:
        js = nc.jetstream()
        bad = {"v": 1, "task_id": str(uuid.uuid4()), "rid": "bad", "items": [{"number": 1}]}
        await js.publish(events.REQUEST_SUBMITTED, orjson.dumps(bad), headers={"Nats-Msg-Id": "request:bad"})
        await system.submit({"rid": "good", "items": [{"number": 1, "job": "sum"}]})
        await system.publish_poll("sum", batch_size=10)
        assert (await system.wait_processed("good"))["items"][0]["result"] == 3

        async def settled() -> bool:
            info = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_for(settled, what="both events settled")
        info = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        assert info.delivered.stream_seq == 2 and info.num_redelivered == 0
    finally:
        await nc.close()
    assert await system.fetchval("SELECT count(*) FROM requests WHERE rid = 'bad'") == 0


def _submissions(system: System, bodies: list[dict[str, object]]) -> list[validation.Submission]:
    """Bodies checked as the gateway checks them, to submit in-process (concurrent callers, one group)."""
    gw = system.settings.gateway
    return [validation.parse_submission(b, system.registry, gw.max_items, gw.max_rid_length) for b in bodies]


async def _settled(js: nats.js.JetStreamContext) -> bool:
    info = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_requests_accepted_together_share_one_message_and_each_is_recorded(system: System) -> None:
    """Concurrent acceptances are published in one JetStream message (one publish, one ack, one delivery,
    one processor ack), and the processor records every request it carries."""
    subs = _submissions(
        system, [{"rid": f"together-{i}", "items": [{"number": i, "job": "sum"}]} for i in range(20)]
    )
    nc = await nats.connect(system.settings.nats_url)
    try:
        js = nc.jetstream()
        before = (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq
        accepted = await asyncio.gather(*(system.app.intake.submit(sub) for sub in subs))
        assert all(a.created for a in accepted)
        last = (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq
        assert last - before == 1  # the callers arrived together: one INSERT, then one publish
        data = (await js.get_msg(events.REQUESTS_STREAM, last)).data
        assert data is not None
        carried = events.read_request_events(data)
        assert [(event.rid, event.task_id) for event, _ in carried] == [
            (sub.rid, a.task_id) for sub, a in zip(subs, accepted, strict=True)
        ]
        await wait_for(lambda: _settled(js), what="the batch acked")
        info = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        assert info.num_redelivered == 0
    finally:
        await nc.close()
    recorded = await system.fetchval(
        "SELECT count(*) FROM requests WHERE rid LIKE 'together-%' AND recorded_at IS NOT NULL"
    )
    assert recorded == 20
    await system.publish_poll("sum", batch_size=100)
    assert (await system.wait_processed("together-19"))["items"][0]["result"] == 21


async def test_a_group_too_large_for_one_message_is_split(system: System) -> None:
    """Requests accepted together whose events exceed one message's byte budget go out in several messages,
    none larger than the budget, all in their order, and each is recorded."""
    items = [{"number": n, "job": "sum"} for n in range(1000)]
    subs = _submissions(system, [{"rid": f"large-{i}", "items": items} for i in range(24)])
    js = system.app.nc.jetstream()
    # The stream is a work queue: a processor's ack removes a message, so none runs while they are read.
    await system.stop_processors()
    before = (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq
    accepted = await asyncio.gather(*(system.app.intake.submit(sub) for sub in subs))
    last = (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq
    assert 2 <= last - before < len(subs)
    carried = []
    for seq in range(before + 1, last + 1):
        data = (await js.get_msg(events.REQUESTS_STREAM, seq)).data
        assert data is not None and len(data) <= OUTBOX_BYTES
        carried += [event.task_id for event, _ in events.read_request_events(data)]
    assert carried == [a.task_id for a in accepted]
    await system.start_processor()
    await wait_for(lambda: _settled(js), what="the messages acked")
    recorded = await system.fetchval(
        "SELECT count(*) FROM requests WHERE rid LIKE 'large-%' AND recorded_at IS NOT NULL"
    )
    assert recorded == len(subs)


async def test_a_malformed_batch_is_dropped_and_its_requests_republished_by_the_sweep(system: System) -> None:
    """A batch with one request that breaks the contract is terminated whole; its valid requests, accepted
    but not recorded, are published again one by one by the processors' sweep."""
    task_id = uuid.uuid4()
    items: list[events.ItemFields] = [{"number": 5, "job": "sum"}]
    payload = events.request_submitted_json(task_id, "swept", items)
    await intake.accept_requests(
        system.hot_engine, [intake.Submitted(task_id, "swept", False, items, payload)]
    )
    bad = {"v": 1, "task_id": str(uuid.uuid4()), "rid": "bad", "items": [{"number": 1}]}
    batch = orjson.dumps(
        {
            "v": 1,
            "requests": [
                {"event": orjson.Fragment(payload), "traceparent": None},
                {"event": bad, "traceparent": None},
            ],
        }
    )
    nc = await nats.connect(system.settings.nats_url)
    try:
        js = nc.jetstream()
        await js.publish(events.REQUEST_SUBMITTED, batch)
        await wait_for(lambda: _settled(js), what="the batch settled")
        info = await js.consumer_info(events.REQUESTS_STREAM, events.REQUESTS_CONSUMER)
        assert info.num_redelivered == 0  # terminated, not handed back
        assert await system.fetchval("SELECT count(*) FROM requests WHERE recorded_at IS NOT NULL") == 0
        assert await system.processors[0].processor.sweep.republish_lost(older_than_seconds=0) == 1
    finally:
        await nc.close()
    await system.publish_poll("sum", batch_size=10)
    assert (await system.wait_processed("swept"))["items"][0]["result"] == 7
    assert await system.fetchval("SELECT count(*) FROM requests WHERE rid = 'bad'") == 0
