"""The original example application's answers on ``/number_request``, kept to the byte for its clients.

Its scripts check the status code (200 or 201), decode the POST's body once and send it back as the body
of every status lookup, then read ``status`` (done when it starts with ``done``), ``processed``,
``numbers``, ``jobtodo`` and ``results``. docs/design.md lists where Squall answers differently, and why.
"""

from __future__ import annotations

import json
from typing import Any

from squall.core.http import ApiError
from squall.core.store import reads
from squall.core.store.reads import present_rid
from squall.gateway import validation
from squall.gateway.base import IntakeHandler, check_body_size

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


class LegacyHandler(IntakeHandler):
    """The original example's contract, kept so its clients and their own scripts work unchanged: the
    original's status codes, its POST answer, and bodies read whatever their ``Content-Type`` claims."""

    route = "/number_request"
    scope = {"POST": "submit", "GET": "read"}
    legacy_route = True

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", CONTENT_TYPE)

    async def post(self) -> None:
        gw = self.app.squall.gateway
        check_body_size(self.app, self.request)
        doc = validation.legacy_document(self.request.body)
        sub = validation.parse_legacy_submission(doc, self.app.registry, gw.max_items, gw.max_rid_length)
        accepted = await self.app.intake.submit(sub)
        task_id = str(accepted.task_id)
        if gw.legacy_post_answer == "original":
            self.set_status(201)
            self.finish(original_post_body(task_id))
        else:
            self.write_json({"task_id": task_id, "rid": present_rid(sub.rid, sub.rid_is_int)}, 201)

    async def get(self) -> None:
        lookup = validation.legacy_lookup(self.request.body, self.request.query_arguments)
        if "rid" in lookup:  # the original looked a rid up first, whatever else was given
            if lookup["rid"] is None:
                raise ApiError(422, "invalid_type", "rid must be an integer or a string", "rid")
            rid = validation.parse_rid(lookup["rid"], self.app.squall.gateway.max_rid_length)[0]
        else:
            task_id = validation.parse_task_id(lookup["task_id"])
            of_task = await reads.rid_of_task(self.app.engine, task_id) if task_id else None
            if of_task is None:
                # The original's 201 and status, with the error beside it for clients that read one.
                error = ApiError(404, "not_found", "no request with this task_id", "task_id")
                self.write_json({"status": UNKNOWN_TASK, **error.body()}, 201)
                return
            rid = of_task
        request = await reads.get_request(self.app.engine, rid)
        if request is None:
            self.write_json(UNKNOWN_RID, 200)
            return
        self.write_json(status_body(request), 201)
