"""The original example's /number_request contract, as its own clients and scripts use it.

The exchanges are replayed with the scripts' own library (``requests``, see ``original_clients``) against a
system in this test's loop, and the main script's flow once more against ``squall dev``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from squall.gateway import legacy
from tests.integration import original_clients
from tests.integration.dev_process import Dev
from tests.integration.harness import System, make_settings

EXPECTED = {"sum": lambda n: n + 2, "mul": lambda n: n * 2}


def _numbers(count: int, seed: int) -> tuple[list[int], list[str]]:
    """What the original scripts send: random numbers, each with a random job of sum and mul."""
    chooser = random.Random(seed)
    numbers = [chooser.randint(0, 100_000) for _ in range(count)]
    return numbers, [chooser.choice(["sum", "mul"]) for _ in range(count)]


def _original_task_id(post: requests.Response) -> str:
    """The task id out of the original's POST answer, checked to be that answer to the byte: 201, its
    content type, and ``{"task_id": "<uuid>"}`` as JSON text encoded again as a JSON string."""
    assert post.status_code == 201, post.text
    assert post.headers["Content-Type"] == legacy.CONTENT_TYPE
    task_id = str(json.loads(json.loads(post.text))["task_id"])
    assert post.content == b'"{\\"task_id\\": \\"' + task_id.encode() + b'\\"}"'
    return task_id


def _check_main_script(
    post: requests.Response, lookups: list[requests.Response], rid: Any, numbers: list[int], jobs: list[str]
) -> dict[str, Any]:
    """Every lookup answered 201 with the original's keys; the last one done with the right results."""
    assert lookups, post.text
    for lookup in lookups:
        assert lookup.status_code == 201, lookup.text
        assert lookup.headers["Content-Type"] == legacy.CONTENT_TYPE
        assert json.loads(lookup.text)["status"] in (legacy.STARTED, legacy.DONE)
    final: dict[str, Any] = json.loads(lookups[-1].text)
    assert final["status"] == legacy.DONE and final["processed"] is True
    assert final["rid"] == rid
    assert final["numbers"] == numbers and final["jobtodo"] == jobs
    assert final["results"] == [EXPECTED[job](n) for n, job in zip(numbers, jobs, strict=True)]
    return final


async def test_main_script_with_the_original_answer(system: System) -> None:
    await system.start_scheduler()
    numbers, jobs = _numbers(7, seed=1)
    post, lookups = await asyncio.to_thread(
        original_clients.main_script, system.base_url, 4242, numbers, jobs
    )
    task_id = _original_task_id(post)
    final = _check_main_script(post, lookups, 4242, numbers, jobs)
    assert final["task_id"] == task_id


async def test_main_script_with_the_plain_object_answer(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    """With ``legacy_post_answer=object`` the script decodes a dict and ``requests`` sends it back as a form
    (``task_id=…&rid=…``) under a JSON content type: the lookups still work."""
    settings = make_settings(nats_url, database_url, gateway={"legacy_post_answer": "object"})
    system = await system_factory(settings)
    await system.start_scheduler()
    numbers, jobs = _numbers(7, seed=2)
    post, lookups = await asyncio.to_thread(original_clients.main_script, system.base_url, 77, numbers, jobs)
    assert post.status_code == 201 and post.headers["Content-Type"] == legacy.CONTENT_TYPE
    assert set(post.json()) == {"task_id", "rid"} and post.json()["rid"] == 77
    final = _check_main_script(post, lookups, 77, numbers, jobs)
    assert final["task_id"] == post.json()["task_id"]


async def test_post_only_and_get_only_scripts(system: System) -> None:
    numbers, jobs = _numbers(3, seed=3)
    post = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 9, numbers, jobs)
    task_id = _original_task_id(post)
    await system.start_scheduler()
    await system.wait_processed(9)
    lookup = await asyncio.to_thread(original_clients.get_by_task_id, system.base_url, task_id)
    assert lookup.status_code == 201
    answer = json.loads(lookup.text)
    assert answer["status"] == legacy.DONE and answer["task_id"] == task_id
    assert answer["numbers"] == numbers and answer["jobtodo"] == jobs
    assert answer["results"] == [EXPECTED[job](n) for n, job in zip(numbers, jobs, strict=True)]


async def test_the_original_answer_sent_back_as_its_json_string(system: System) -> None:
    """A client that forwards the POST's body untouched sends a JSON string holding the lookup."""
    post = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 10, [1], ["sum"])
    task_id = _original_task_id(post)
    lookup = await asyncio.to_thread(original_clients.get_status, system.base_url, post.text)
    assert lookup.status_code == 201 and json.loads(lookup.text)["task_id"] == task_id


@pytest.mark.parametrize("how", ["json_body", "form_body", "query", "rid_json", "rid_form", "rid_query"])
async def test_lookups_by_task_id_or_rid(system: System, how: str) -> None:
    post = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 12, [4, 9], ["sum", "mul"])
    task_id = _original_task_id(post)
    await system.start_scheduler()
    await system.wait_processed(12)
    client = system.client
    if how == "json_body":
        response = await client.request("GET", "/number_request", json={"task_id": task_id})
    elif how == "form_body":
        response = await client.request("GET", "/number_request", data={"task_id": task_id})
    elif how == "query":
        response = await client.get("/number_request", params={"task_id": task_id})
    elif how == "rid_json":
        response = await client.request("GET", "/number_request", json={"rid": 12})
    elif how == "rid_form":
        response = await client.request("GET", "/number_request", data={"rid": "12"})
    else:
        response = await client.get("/number_request", params={"rid": "12"})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["status"] == legacy.DONE and answer["processed"] is True
    assert (answer["rid"], answer["task_id"]) == (12, task_id)
    assert (answer["numbers"], answer["jobtodo"], answer["results"]) == ([4, 9], ["sum", "mul"], [6, 18])


async def test_status_before_recording_is_started(system: System) -> None:
    await system.stop_processors()
    post = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 5, [1, 2], ["sum"])
    task_id = _original_task_id(post)
    lookup = await asyncio.to_thread(original_clients.get_by_task_id, system.base_url, task_id)
    assert lookup.status_code == 201
    answer = json.loads(lookup.text)
    assert answer["status"] == legacy.STARTED
    assert answer["processed"] is False and answer["results"] == [None, None]


async def test_a_form_encoded_submission(system: System) -> None:
    """A dict body given to ``requests`` is sent as a form with repeated keys for the lists."""
    body = {"rid": 31, "numbers": [5, 6], "jobtodo": ["mul", "sum"]}
    post = await asyncio.to_thread(
        requests.post, f"{system.base_url}/number_request", data=body, headers=original_clients.HEADERS
    )
    _original_task_id(post)
    await system.start_scheduler()
    state = await system.wait_processed("31")
    assert [(i["number"], i["job"], i["result"]) for i in state["items"]] == [(5, "mul", 10), (6, "sum", 8)]


async def test_the_original_answers_to_unknown_or_missing_keys(system: System) -> None:
    unknown_task = await asyncio.to_thread(original_clients.get_by_task_id, system.base_url, "0" * 32)
    assert unknown_task.status_code == 201
    assert unknown_task.headers["Content-Type"] == legacy.CONTENT_TYPE
    assert unknown_task.json() == {
        "status": legacy.UNKNOWN_TASK,
        "error": {"code": "not_found", "message": "no request with this task_id", "field": "task_id"},
    }
    not_a_uuid = await asyncio.to_thread(original_clients.get_by_task_id, system.base_url, "nope")
    assert not_a_uuid.status_code == 201 and not_a_uuid.json()["status"] == legacy.UNKNOWN_TASK

    unknown_rid = await asyncio.to_thread(
        original_clients.get_status, system.base_url, json.dumps({"rid": 404})
    )
    assert unknown_rid.status_code == 200
    assert unknown_rid.content == json.dumps(legacy.UNKNOWN_RID).encode()
    by_query = await system.client.get("/number_request", params={"rid": "never"})
    assert by_query.status_code == 200 and by_query.json() == legacy.UNKNOWN_RID

    for neither in (json.dumps({"numbers": [1]}), None):
        wrong = await asyncio.to_thread(original_clients.get_status, system.base_url, neither)
        assert wrong.status_code == 400
        assert wrong.json()["error"]["code"] == "missing_field"
        assert wrong.json()["error"]["field"] == "task_id"
        assert wrong.json()["error"]["message"].startswith("Wrong get request")


async def test_one_job_for_all_numbers(system: System) -> None:
    post = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 3, [1, 2, 3], ["mul"])
    _original_task_id(post)
    await system.start_scheduler()
    state = await system.wait_processed(3)
    assert [i["result"] for i in state["items"]] == [2, 4, 6]


async def test_the_same_rid_again(system: System) -> None:
    """The same request again answers 201 and the same task id; other items under that rid are a 409
    (the original lost the second request silently)."""
    first = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 8, [1], ["sum"])
    again = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 8, [1], ["sum"])
    assert _original_task_id(again) == _original_task_id(first)
    other = await asyncio.to_thread(original_clients.post_numbers, system.base_url, 8, [2], ["sum"])
    assert other.status_code == 409 and other.json()["error"]["field"] == "rid"


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"rid": 1, "numbers": [1], "jobtodo": ["nope"]}, 422, "unknown_job", "jobtodo[0]"),
        ({"rid": 1, "numbers": [1, 2], "jobtodo": ["sum", "mul", "sum"]}, 422, "length_mismatch", "jobtodo"),
        ({"rid": 1, "jobtodo": ["sum"]}, 422, "missing_field", "numbers"),
        ({"rid": 1, "numbers": ["x"], "jobtodo": ["sum"]}, 422, "invalid_type", "numbers[0]"),
        ({"rid": 1, "numbers": [2**64], "jobtodo": ["sum"]}, 422, "out_of_range", "numbers[0]"),
        ("rid=1&numbers=x&jobtodo=sum", 422, "invalid_type", "numbers[0]"),
        ("not a form, not JSON", 400, "invalid_json", "body"),
        ('"not JSON inside"', 400, "invalid_json", "body"),
        ("[1, 2]", 422, "invalid_type", "body"),
    ],
)
async def test_bad_legacy_submissions(system: System, body: Any, status: int, code: str, field: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = await system.client.post(
        "/number_request", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


async def test_a_lookup_with_a_malformed_key(system: System) -> None:
    bad_rid = await system.client.request("GET", "/number_request", json={"rid": "../etc"})
    assert bad_rid.status_code == 422 and bad_rid.json()["error"]["field"] == "rid"
    numeric_task = await system.client.request("GET", "/number_request", json={"task_id": 5})
    assert numeric_task.status_code == 422 and numeric_task.json()["error"]["field"] == "task_id"


# --- against `squall dev`, as a user of the original would run it -------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    tmp_path: Path = tmp_path_factory.mktemp("legacy-dev")
    running = Dev(tmp_path, tmp_path / "data", env={"SQUALL_PROCESSINGS__MUL__INTERVAL_SECONDS": "0.3"})
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 7, 300])
def test_main_script_against_squall_dev(dev: Dev, count: int) -> None:
    numbers, jobs = _numbers(count, seed=count)
    rid = 100_000 + count  # the script picks one in 0..100000; unique here
    post, lookups = original_clients.main_script(dev.url, rid, numbers, jobs)
    task_id = _original_task_id(post)
    final = _check_main_script(post, lookups, rid, numbers, jobs)
    assert final["task_id"] == task_id
    # The get-only script on the same task, and a lookup by rid.
    lookup = original_clients.get_by_task_id(dev.url, task_id)
    assert lookup.status_code == 201 and json.loads(lookup.text) == final
    by_rid = original_clients.get_status(dev.url, json.dumps({"rid": rid}))
    assert by_rid.status_code == 201 and json.loads(by_rid.text)["results"] == final["results"]


@pytest.mark.slow
def test_unknown_and_wrong_lookups_against_squall_dev(dev: Dev) -> None:
    unknown_task = original_clients.get_by_task_id(dev.url, "0" * 32)
    assert unknown_task.status_code == 201 and unknown_task.json()["status"] == legacy.UNKNOWN_TASK
    unknown_rid = original_clients.get_status(dev.url, json.dumps({"rid": 999_999}))
    assert unknown_rid.status_code == 200 and unknown_rid.json() == legacy.UNKNOWN_RID
    wrong = original_clients.get_status(dev.url, json.dumps({}))
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "task_id"
    # The v1 API beside it sees the same requests.
    assert httpx.get(f"{dev.url}/v1/stats").status_code == 200
