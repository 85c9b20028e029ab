"""GET /v1/tasks: filtered by state, kind and processing, newest first, a page at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.integration.harness import System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def test_failed_poll_tasks_and_paging(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    for index in range(5):
        await system.submit({"rid": f"t{index}", "items": [{"number": index, "job": "refuse"}]})

    async def recorded() -> bool:
        return await system.fetchval("SELECT count(*) FROM items") == 5

    await wait_for(recorded, what="recorded")
    failing = await system.publish_poll("refuse", batch_size=100)

    async def failed() -> list[object]:
        return (await system.client.get("/v1/tasks", params={"state": "failed"})).json()["tasks"]  # type: ignore[no-any-return]

    tasks = await wait_for(failed, what="a failed poll task")
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
