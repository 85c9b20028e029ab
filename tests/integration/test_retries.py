"""A failed batch: retryable errors come back after a backoff, permanent ones fail at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.integration import effect_processings
from tests.integration.harness import System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def _recorded(system: System, rid: str) -> None:
    async def recorded() -> bool:
        return bool((await system.request_state(rid))["recorded"])

    await wait_for(recorded, what=f"{rid} recorded")


async def test_retryable_failure_waits_its_backoff_then_succeeds(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.FLAKY_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit({"rid": "f", "items": [{"number": n, "job": "flaky"} for n in range(3)]})
    await _recorded(system, "f")
    first = await system.publish_poll("flaky", batch_size=100)

    async def failed_once() -> bool:
        return (await system.client.get(f"/v1/tasks/{first}")).json()["state"] == "failed"

    await wait_for(failed_once, what="the first batch failed")
    rows = await system.fetch("SELECT state, attempts, error, not_before, updated_at FROM all_items")
    assert all(r["state"] == "pending" and r["attempts"] == 1 for r in rows)
    assert all("ConnectionError" in r["error"] for r in rows)
    # Backoff: 0.5 s x 2^0, +-20 %.
    waits = [(r["not_before"] - r["updated_at"]).total_seconds() for r in rows]
    assert all(0.39 <= w <= 0.61 for w in waits), waits
    # Within the backoff, a poll claims nothing; after it, the items are retried and done. The backoff is
    # held an hour away while the early poll runs (0.5 s could pass before it claims on a slow machine),
    # then given back its own end.
    not_before = {r["position"]: r["not_before"] for r in await system.fetch(_NOT_BEFORE)}
    await system.fetchval("UPDATE items SET not_before = now() + interval '1 hour'")
    early = await system.publish_poll("flaky", batch_size=100)

    async def finished(task_id: object) -> dict[str, object] | None:
        task = (await system.client.get(f"/v1/tasks/{task_id}")).json()
        return task if task["state"] in ("succeeded", "failed") else None

    early_task = await wait_for(lambda: finished(early), what="the early poll")
    assert early_task["state"] == "succeeded" and early_task["items_processed"] == 0, early_task
    rows = await system.fetch("SELECT state, attempts FROM all_items")
    assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 1)] * 3
    assert len(effect_processings.FLAKY_CALLS) == 1
    for position, moment in not_before.items():
        await system.fetchval("UPDATE items SET not_before = $1 WHERE position = $2", moment, position)
    assert {r["position"]: r["not_before"] for r in await system.fetch(_NOT_BEFORE)} == not_before
    await wait_for(lambda: _not_before_passed(system), what="the backoff to pass", timeout=5)
    await system.publish_poll("flaky", batch_size=100)
    state = await system.wait_processed("f")
    assert [i["result"] for i in state["items"]] == [0, 10, 20]
    assert await system.fetchval("SELECT max(attempts) FROM all_items") == 2
    assert len(effect_processings.FLAKY_CALLS) == 2


_NOT_BEFORE = "SELECT position, not_before FROM items"


async def _not_before_passed(system: System) -> bool:
    return bool(await system.fetchval("SELECT bool_and(not_before <= now()) FROM all_items"))


async def test_permanent_failure_fails_the_items_at_once(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit(
        {"rid": "p", "items": [{"number": 1, "job": "refuse"}, {"number": 2, "job": "refuse"}]}
    )
    await _recorded(system, "p")
    await system.publish_poll("refuse", batch_size=100)
    state = await system.wait_processed("p")  # processed: nothing left pending
    assert state["counts"] == {"pending": 0, "done": 0, "failed": 2}
    assert all(i["error"] == "permanent: this input can never be processed" for i in state["items"])
    assert await system.fetchval("SELECT max(attempts) FROM all_items") == 1


async def test_immediate_items_are_retried_by_their_schedule(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.FLAKY_NOW_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.start_scheduler()
    await system.submit({"rid": "now", "items": [{"number": n, "job": "flaky_now"} for n in range(3)]})
    state = await system.wait_processed("now", timeout=30)
    assert [i["result"] for i in state["items"]] == [0, 7, 14]
    rows = await system.fetch("SELECT attempts, error FROM all_items ORDER BY position")
    assert [r["attempts"] for r in rows] == [2, 2, 2]  # computed at recording, then once by a poll task
    # Once all together at recording, then once each by the schedule's poll tasks: the backoff has a
    # jitter per item, so a poll task may find some of them due and the next one the rest.
    first, *later = effect_processings.FLAKY_NOW_CALLS
    assert first == [0, 1, 2]
    assert sorted(n for call in later for n in call) == [0, 1, 2]

    async def counted() -> dict[str, object] | None:  # /v1/stats is cached for a second
        stats = (await system.client.get("/v1/stats")).json()
        return stats if "flaky_now" in stats["items"] and not stats["items"]["flaky_now"]["pending"] else None

    stats = await wait_for(counted, what="the counts after the retries")
    assert stats["items"]["flaky_now"] == {"pending": 0, "done": 3, "failed": 0}


async def test_immediate_items_out_of_attempts_are_dead_and_replayable(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.BROKEN_NOW_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.start_scheduler()
    await system.submit({"rid": "gone", "items": [{"number": 1, "job": "broken_now"}]})
    state = await system.wait_processed("gone", timeout=30)
    assert state["items"][0]["state"] == "failed" and "ConnectionError" in state["items"][0]["error"]

    async def dead() -> list[dict[str, object]]:
        answer = await system.client.get("/v1/tasks", params={"state": "dead", "processing": "broken_now"})
        return answer.json()["tasks"]  # type: ignore[no-any-return]

    tasks = await wait_for(dead, what="a dead task holding the failed immediate item")
    assert len(effect_processings.BROKEN_NOW_CALLS) == 2  # at recording, then one retry: max_attempts
    replay = await system.client.post(f"/v1/tasks/{tasks[0]['task_id']}/retry")
    assert replay.status_code == 202, replay.text

    async def tried_again() -> bool:
        return len(effect_processings.BROKEN_NOW_CALLS) == 4  # fresh attempts: two more calls

    await wait_for(tried_again, timeout=30, what="the replayed item run again")
    await wait_for(lambda: system.wait_processed("gone"), what="failed again, processed")


async def test_an_immediate_request_failed_at_recording_is_dead_and_replayable(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.REFUSE_ONCE_NOW_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.start_scheduler()
    accepted = await system.submit(
        {"rid": "priced", "items": [{"number": n, "job": "refuse_once_now"} for n in (1, 2)]}
    )
    state = await system.wait_processed("priced")
    assert [i["state"] for i in state["items"]] == ["failed", "failed"]
    # A permanent error at recording: the request task is dead with the error, listed with the dead letters.
    dead = (await system.client.get("/v1/tasks", params={"state": "dead", "kind": "request"})).json()["tasks"]
    assert [t["task_id"] for t in dead] == [accepted["task_id"]]
    assert "price list is missing" in dead[0]["error"]

    async def dead_counted() -> dict[str, int] | None:  # /v1/stats is cached for a second
        dead_tasks: dict[str, int] = (await system.client.get("/v1/stats")).json()["dead_tasks"]
        return dead_tasks or None

    assert await wait_for(dead_counted, what="the dead task counted") == {"refuse_once_now": 1}
    # Replayed: fresh attempts, run by the processing's schedule; a second replay is a 409.
    replay = await system.client.post(f"/v1/tasks/{accepted['task_id']}/retry")
    assert replay.status_code == 202 and replay.json()["state"] == "succeeded", replay.text
    assert (await system.client.post(f"/v1/tasks/{accepted['task_id']}/retry")).status_code == 409
    state = await system.wait_processed("priced", timeout=30)
    assert [i["result"] for i in state["items"]] == [6, 7]
    assert len(effect_processings.REFUSE_ONCE_NOW_CALLS) == 2

    async def counted() -> dict[str, object] | None:  # /v1/stats is cached for a second
        stats = (await system.client.get("/v1/stats")).json()
        return stats if stats["items"]["refuse_once_now"]["done"] == 2 else None

    stats = await wait_for(counted, what="the counts after the replay")
    assert stats["items"]["refuse_once_now"] == {"pending": 0, "done": 2, "failed": 0}
    assert stats["requests"]["processed"] == 1 and stats["dead_tasks"] == {}
