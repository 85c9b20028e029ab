"""The original application's own request scripts, as they speak on the wire.

Each function sends exactly what one of the original's scripts sends, with the library they use
(``requests``): a ``Content-type: application/json`` header, the body built the same way, and, for the
main script, the POST's answer decoded once and sent back as the body of every status lookup. The
callers assert on what comes back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

HEADERS = {"Content-type": "application/json"}
# The original script polls every 2 s; the replay polls faster, within a deadline.
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 30


def post_numbers(base_url: str, rid: Any, numbers: list[int], jobs: list[str]) -> requests.Response:
    """``send_post_request.py`` (and the first step of the main script): the body as JSON text."""
    body = {"rid": rid, "numbers": numbers, "jobtodo": jobs}
    return requests.post(
        f"{base_url}/number_request", data=json.dumps(body), headers=HEADERS, timeout=TIMEOUT_SECONDS
    )


def get_status(base_url: str, body: Any) -> requests.Response:
    """A status lookup with ``body`` given to ``requests`` as the scripts give it: JSON text or a string is
    sent as it is, a dict is sent form-encoded (while the header still says JSON)."""
    return requests.get(f"{base_url}/number_request", data=body, headers=HEADERS, timeout=TIMEOUT_SECONDS)


def get_by_task_id(base_url: str, task_id: str) -> requests.Response:
    """``send_get_request.py``: ``{"task_id": …}`` as JSON text."""
    return get_status(base_url, json.dumps({"task_id": task_id}))


def main_script(
    base_url: str, rid: Any, numbers: list[int], jobs: list[str], deadline_seconds: float = 60
) -> tuple[requests.Response, list[requests.Response]]:
    """``send_full_request.py``: submit, then poll with the decoded POST answer until the status starts with
    ``done`` and ``processed`` is true, stopping (as the script does) at the first answer other than 200 or
    201. Returns the POST's answer and every lookup's."""
    post = post_numbers(base_url, rid, numbers, jobs)
    if post.status_code not in (200, 201):
        return post, []
    sent_back = json.loads(post.text)  # a string for the original's answer, a dict for a plain object
    assert "task_id" in sent_back, post.text  # the script's own check (a substring test on a string)
    lookups: list[requests.Response] = []
    deadline = time.monotonic() + deadline_seconds
    while True:
        lookup = get_status(base_url, sent_back)
        lookups.append(lookup)
        if lookup.status_code not in (200, 201):
            return post, lookups
        answer = json.loads(lookup.text)
        if answer["status"].startswith("done") and answer["processed"]:
            return post, lookups
        if time.monotonic() > deadline:
            raise AssertionError(f"not processed within {deadline_seconds} s; last answer: {lookup.text}")
        time.sleep(POLL_SECONDS)
