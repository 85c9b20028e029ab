"""The original example application's answers on ``/number_request``, kept to the byte for its clients.

Its scripts check the status code (200 or 201), decode the POST's body once and send it back as the body
of every status lookup, then read ``status`` (done when it starts with ``done``), ``processed``,
``numbers``, ``jobtodo`` and ``results``. docs/design.md lists where Squall answers differently, and why.
"""

from __future__ import annotations

import json
from typing import Any

CONTENT_TYPE = 'application/json; charset="utf-8"'
DONE = "done (request into our db)"
STARTED = "started (put request into our db)"
UNKNOWN_TASK = "task id not found into the global dictionary"
UNKNOWN_RID = "rid not found into our db "


def original_post_body(task_id: str) -> bytes:
    """The original's 201 body: ``{"task_id": …}`` as JSON text (Python's own separators), then that text
    encoded again as a JSON string."""
    return json.dumps(json.dumps({"task_id": task_id})).encode()


def status_body(request: dict[str, Any]) -> dict[str, Any]:
    """A lookup's 201 body from the request as ``GET /v1/requests/{rid}`` shows it."""
    items = request["items"]
    return {
        "status": DONE if request["recorded"] else STARTED,
        "task_id": request["task_id"],
        "rid": request["rid"],
        "processed": request["processed"],
        "numbers": [i["number"] for i in items],
        "jobtodo": [i["job"] for i in items],
        "results": [i["result"] for i in items],
    }
