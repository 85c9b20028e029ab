"""GET /v1/tasks: filtered by state, kind and processing, newest first, a page at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.integration import effect_processings
from tests.integration.harness import System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def test_failed_poll_tasks_and_paging(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    for index in range(5):
        await system.submit({"rid": f"t{index}", "items": [{"number": index, "job": "refuse"}]})

    async def recorded() -> bool:
        return await system.fetchval("SELECT count(*) FROM all_items") == 5

    await wait_for(recorded, what="recorded")
    failing = await system.publish_poll("refuse", batch_size=100)

    async def dead() -> list[object]:
        return (await system.client.get("/v1/tasks", params={"state": "dead"})).json()["tasks"]  # type: ignore[no-any-return]

    tasks = await wait_for(dead, what="a dead poll task (a permanent error)")
    assert [t["task_id"] for t in tasks] == [str(failing)]
    assert tasks[0]["processing"] == "refuse" and tasks[0]["error"].startswith("permanent:")

    # Five request tasks, two per page, newest first, no task twice.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"kind": "request", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await system.client.get("/v1/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 5
    created = [
        t["created_at"]
        for t in (await system.client.get("/v1/tasks", params={"kind": "request"})).json()["tasks"]
    ]
    assert created == sorted(created, reverse=True)
    only = (await system.client.get("/v1/tasks", params={"processing": "refuse"})).json()["tasks"]
    assert {t["kind"] for t in only} == {"poll"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "exploded"}, "state"),
        ({"kind": "x"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-ours"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_task_queries(system: System, params: dict[str, str], field: str) -> None:
    response = await system.client.get("/v1/tasks", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


async def test_replaying_a_dead_task_once(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.REFUSE_ONCE_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit({"rid": "r", "items": [{"number": n, "job": "refuse_once"} for n in range(3)]})

    async def recorded() -> bool:
        return await system.fetchval("SELECT count(*) FROM all_items") == 3

    await wait_for(recorded, what="recorded")
    task_id = await system.publish_poll("refuse_once", batch_size=100)

    async def state() -> str:
        return str((await system.client.get(f"/v1/tasks/{task_id}")).json()["state"])

    await wait_for(lambda: _is(state, "dead"), what="the task dead")
    assert (await system.request_state("r"))["counts"]["failed"] == 3
    replayed = await system.client.post(f"/v1/tasks/{task_id}/retry")
    assert replayed.status_code == 202 and replayed.json()["state"] in ("queued", "running", "succeeded")
    again = await system.client.post(f"/v1/tasks/{task_id}/retry")  # a double click: nothing runs twice
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_dead"
    result = await system.wait_processed("r")
    assert [i["result"] for i in result["items"]] == [1000, 1001, 1002]
    await wait_for(lambda: _is(state, "succeeded"), what="the replayed task succeeded")
    assert len(effect_processings.REFUSE_ONCE_CALLS) == 2
    assert (await system.client.post(f"/v1/tasks/{task_id}/retry")).status_code == 409
    assert (
        await system.client.post("/v1/tasks/00000000-0000-0000-0000-000000000000/retry")
    ).status_code == 404


async def _is(state: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await state() == wanted
