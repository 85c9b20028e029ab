"""The original application's answers, built by pure functions."""

from __future__ import annotations

import json

from squall.gateway import legacy


def test_the_post_answer_is_the_task_id_encoded_twice() -> None:
    body = legacy.original_post_body("5c4e71a4-9fe5-4fc9-a3c8-034fe587f966")
    assert body == b'"{\\"task_id\\": \\"5c4e71a4-9fe5-4fc9-a3c8-034fe587f966\\"}"'
    assert json.loads(json.loads(body)) == {"task_id": "5c4e71a4-9fe5-4fc9-a3c8-034fe587f966"}


def test_a_status_lists_numbers_jobs_and_results_in_order() -> None:
    request = {
        "rid": 12,
        "task_id": "t",
        "recorded": True,
        "processed": False,
        "items": [
            {"number": 4, "job": "sum", "state": "done", "result": 6, "error": None},
            {"number": 9, "job": "mul", "state": "pending", "result": None, "error": None},
        ],
    }
    assert legacy.status_body(request) == {
        "status": legacy.DONE,
        "task_id": "t",
        "rid": 12,
        "processed": False,
        "numbers": [4, 9],
        "jobtodo": ["sum", "mul"],
        "results": [6, None],
    }
    assert legacy.status_body({**request, "recorded": False})["status"] == legacy.STARTED
    assert legacy.DONE.startswith("done") and not legacy.STARTED.startswith("done")
