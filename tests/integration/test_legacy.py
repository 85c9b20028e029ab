"""The original example's /number_request contract, as its own clients use it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.harness import System, wait_for


async def _legacy_submit(system: System, rid: int) -> str:
    response = await system.client.post(
        "/number_request", json={"rid": rid, "numbers": [4, 9], "jobtodo": ["sum", "mul"]}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["task_id"])


@pytest.mark.parametrize("how", ["json_body", "form_body", "query", "rid_json", "rid_query"])
async def test_round_trip(system: System, how: str) -> None:
    task_id = await _legacy_submit(system, 12)
    await system.start_scheduler()

    async def lookup() -> dict[str, Any]:
        client = system.client
        if how == "json_body":
            response = await client.request("GET", "/number_request", json={"task_id": task_id})
        elif how == "form_body":
            response = await client.request("GET", "/number_request", data={"task_id": task_id})
        elif how == "query":
            response = await client.get("/number_request", params={"task_id": task_id})
        elif how == "rid_json":
            response = await client.request("GET", "/number_request", json={"rid": 12})
        else:
            response = await client.get("/number_request", params={"rid": "12"})
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    async def processed() -> dict[str, Any] | None:
        answer = await lookup()
        # What the original clients test.
        return answer if answer["status"].startswith("done") and answer["processed"] else None

    answer = await wait_for(processed, what="legacy request processed")
    assert answer["rid"] == 12
    assert answer["numbers"] == [4, 9]
    assert answer["jobtodo"] == ["sum", "mul"]
    assert answer["results"] == [6, 18]
    assert answer["task_id"] == task_id


async def test_status_before_recording_is_not_done(system: System) -> None:
    await system.stop_processors()
    task_id = await _legacy_submit(system, 5)
    answer = (await system.client.get("/number_request", params={"task_id": task_id})).json()
    assert not answer["status"].startswith("done")
    assert answer["processed"] is False and answer["results"] == [None, None]


async def test_one_job_for_all_numbers(system: System) -> None:
    response = await system.client.post(
        "/number_request", json={"rid": 3, "numbers": [1, 2, 3], "jobtodo": ["mul"]}
    )
    assert response.status_code == 201
    await system.start_scheduler()
    state = await system.wait_processed(3)
    assert [i["result"] for i in state["items"]] == [2, 4, 6]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"rid": 1, "numbers": [1], "jobtodo": ["nope"]}, 422, "unknown_job", "jobtodo[0]"),
        ({"rid": 1, "numbers": [1, 2], "jobtodo": ["sum", "mul", "sum"]}, 422, "length_mismatch", "jobtodo"),
        ({"rid": 1, "jobtodo": ["sum"]}, 422, "missing_field", "numbers"),
        ({"rid": 1, "numbers": ["x"], "jobtodo": ["sum"]}, 422, "invalid_type", "numbers[0]"),
        ({"rid": 1, "numbers": [2**64], "jobtodo": ["sum"]}, 422, "out_of_range", "numbers[0]"),
    ],
)
async def test_bad_legacy_submissions(
    system: System, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    response = await system.client.post("/number_request", json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


async def test_lookups_of_unknown_or_missing_ids(system: System) -> None:
    missing = await system.client.get("/number_request")
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "task_id"
    unknown = await system.client.get("/number_request", params={"task_id": "0" * 32})
    assert unknown.status_code == 404
    unknown_rid = await system.client.get("/number_request", params={"rid": "never"})
    assert unknown_rid.status_code == 404 and unknown_rid.json()["error"]["field"] == "rid"
