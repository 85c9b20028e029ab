"""The OpenAPI 3.1 description of the gateway, served at ``/v1/openapi.json``: its paths here, its
components in ``openapi_schemas``.

A test checks that every route the application serves is described here, and the reverse.
"""

from __future__ import annotations

from typing import Any

from squall.core.metrics import VERSION
from squall.core.rules import MAX_JSON_DEPTH, MAX_TASK_PAGE, NAME_MAX_LENGTH, TASK_KINDS, TASK_STATES
from squall.gateway import legacy
from squall.gateway.openapi_schemas import component_schemas, error_answers, json_answer, ref, rid_schema


def openapi_spec(processings: list[str], max_rid_length: int) -> dict[str, Any]:
    """The whole document; ``max_rid_length`` is the gateway's setting."""
    schemas = component_schemas(processings, max_rid_length)
    lookup_params = [
        {"name": "task_id", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "rid", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    paths: dict[str, Any] = {
        "/v1/requests": {
            "post": {
                "operationId": "submitRequest",
                "summary": "Submit a request of items.",
                "description": f"JSON nested deeper than {MAX_JSON_DEPTH} levels is refused.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("Submission")}},
                },
                "responses": {
                    "202": json_answer(ref("Accepted"), "Accepted; processing follows."),
                    "200": json_answer(ref("Accepted"), "An identical earlier submission: the same task."),
                    **error_answers(400, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/requests/{rid}": {
            "get": {
                "operationId": "getRequest",
                "summary": "A request's items, their states and results.",
                "parameters": [{"name": "rid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": json_answer(ref("RequestStatus"), "The request."),
                    **error_answers(404, 503),
                },
            }
        },
        "/v1/tasks": {
            "get": {
                "operationId": "listTasks",
                "summary": "Tasks, newest first, filtered, a page at a time (e.g. state=failed).",
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": list(TASK_STATES),
                        },
                    },
                    {
                        "name": "kind",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(TASK_KINDS)},
                    },
                    {
                        "name": "processing",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": NAME_MAX_LENGTH},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TASK_PAGE, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "next_cursor of the previous page.",
                    },
                ],
                "responses": {
                    "200": json_answer(
                        {
                            "type": "object",
                            "required": ["tasks", "next_cursor"],
                            "properties": {
                                "tasks": {"type": "array", "items": ref("Task")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of tasks.",
                    ),
                    **error_answers(422, 503),
                },
            }
        },
        "/v1/tasks/{task_id}/retry": {
            "post": {
                "operationId": "retryTask",
                "summary": "Replay a dead poll task: its failed items get fresh attempts (again: 409).",
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "202": json_answer(ref("Task"), "Queued again."),
                    **error_answers(404, 409, 503),
                },
            }
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "operationId": "getTask",
                "summary": "A task's state (request tasks resolve as soon as POST answered).",
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": json_answer(ref("Task"), "The task."), **error_answers(404, 503)},
            }
        },
        "/v1/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Request and item totals (at most a second old; cheap to poll).",
                "responses": {"200": json_answer(ref("Stats"), "The totals."), **error_answers(503)},
            }
        },
        "/v1/retention": {
            "get": {
                "operationId": "getRetention",
                "summary": "Retention periods, the oldest finished work kept, and each table's size on disk.",
                "responses": {"200": json_answer(ref("Retention"), "Retention."), **error_answers(503)},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {"200": json_answer({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
        "/number_request": {
            "post": {
                "operationId": "legacySubmit",
                "summary": "The original example's submission.",
                "description": "The body is read whatever its Content-Type says: a JSON object, a JSON "
                "string holding one, or a form (rid=12&numbers=4&numbers=9&jobtodo=sum&jobtodo=mul: a list "
                "as repeated keys, so a form cannot tell one number from a list of one, and is not described "
                "by a schema here). The answer is the original's unless "
                "SQUALL_GATEWAY__LEGACY_POST_ANSWER=object.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("LegacySubmission")}},
                },
                "responses": {
                    "201": json_answer(
                        {
                            "anyOf": [
                                {
                                    "type": "string",
                                    "description": "The original's answer: the JSON text "
                                    '{"task_id": "<uuid>"} encoded again as a JSON string.',
                                },
                                {
                                    "type": "object",
                                    "required": ["task_id", "rid"],
                                    "properties": {
                                        "task_id": {"type": "string"},
                                        "rid": rid_schema(max_rid_length),
                                    },
                                },
                            ]
                        },
                        "Accepted (also an identical submission again).",
                    ),
                    **error_answers(400, 409, 413, 422, 503),
                },
            },
            "get": {
                "operationId": "legacyStatus",
                "summary": "The original status lookup (task_id or rid in the body, whatever its "
                "Content-Type says, or the query); a rid is looked up first.",
                "parameters": lookup_params,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": ref("LegacyLookup")},
                        "application/x-www-form-urlencoded": {"schema": ref("LegacyLookup")},
                    },
                },
                "responses": {
                    "201": json_answer(
                        {"anyOf": [ref("LegacyStatus"), ref("LegacyUnknownTask")]},
                        "The request, or (as the original answered) a task id it does not know.",
                    ),
                    "200": json_answer(
                        {"type": "string", "const": legacy.UNKNOWN_RID},
                        "No request with this rid (the original's answer).",
                    ),
                    "400": json_answer(ref("Error"), "Neither task_id nor rid given, or a malformed body."),
                    **error_answers(413, 422, 503),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive.",
                "responses": {"200": json_answer(ref("Status"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "NATS and PostgreSQL are reachable.",
                "responses": {
                    "200": json_answer(ref("Status"), "Ready."),
                    "503": json_answer({"type": "object"}, "Not ready; `problems` says why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    paths.update(_admin_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Squall gateway",
            "version": VERSION,
            "description": "Submit requests of items; read task and request state.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": ref(item)}}}


def _name(what: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": f"The {what}'s name.",
        }
    ]


def _operation(
    operation_id: str,
    summary: str,
    answers: dict[str, Any],
    errors: tuple[int, ...],
    name: str | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    """An operation of the operator API: its answers, its errors, and the path's name and request body."""
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if name is not None:
        operation["parameters"] = _name(name)
    if body is not None:
        operation["requestBody"] = _body(body)
    operation["responses"] = {**answers, **error_answers(*errors)}
    return operation


def _admin_paths() -> dict[str, Any]:
    deleted = {"204": {"description": "Deleted."}}
    return {
        "/v1/schedules": {
            "get": _operation(
                "listSchedules",
                "Every schedule.",
                {"200": json_answer(_list_of("schedules", "Schedule"), "Schedules.")},
                (503,),
            ),
            "post": _operation(
                "createSchedule",
                "Create a schedule (interval or cron).",
                {"201": json_answer(ref("Schedule"), "Created.")},
                (400, 409, 413, 415, 422, 503),
                body="ScheduleCreate",
            ),
        },
        "/v1/schedules/{name}": {
            "get": _operation(
                "getSchedule",
                "A schedule and its latest ticks.",
                {"200": json_answer(ref("Schedule"), "The schedule.")},
                (404, 503),
                name="schedule",
            ),
            "patch": _operation(
                "patchSchedule",
                "Change a schedule.",
                {"200": json_answer(ref("Schedule"), "Changed.")},
                (400, 404, 413, 415, 422, 503),
                name="schedule",
                body="SchedulePatch",
            ),
            "delete": {
                "operationId": "deleteSchedule",
                "summary": "Delete a schedule and its tick log.",
                "parameters": _name("schedule"),
                "responses": {**deleted, **error_answers(404, 503)},
            },
        },
        "/v1/schedules/{name}/run": {
            "post": _operation(
                "runSchedule",
                "Tick now (the leader fires it at once).",
                {
                    "202": json_answer(
                        {
                            "type": "object",
                            "properties": {
                                "schedule": {"type": "string"},
                                "due_at": {"type": "string", "format": "date-time"},
                            },
                        },
                        "Due now.",
                    )
                },
                (404, 503),
                name="schedule",
            )
        },
        "/v1/schedulers": {
            "get": _operation(
                "listSchedulers",
                "Scheduler replicas and which one leads.",
                {"200": json_answer(ref("Schedulers"), "Replicas seen in the last 30 s.")},
                (503,),
            )
        },
        "/v1/processings": {
            "get": _operation(
                "listProcessings",
                "Every registered processing.",
                {"200": json_answer(_list_of("processings", "Processing"), "Processings.")},
                (503,),
            )
        },
        "/v1/processings/{name}": {
            "get": _operation(
                "getProcessing",
                "A processing.",
                {"200": json_answer(ref("Processing"), "The processing.")},
                (404, 503),
                name="processing",
            ),
            "patch": _operation(
                "patchProcessing",
                "Pause or resume; set its dependencies.",
                {"200": json_answer(ref("Processing"), "Changed.")},
                (400, 404, 413, 415, 422, 503),
                name="processing",
                body="ProcessingPatch",
            ),
        },
        "/v1/dependencies": {
            "get": _operation(
                "listDependencies",
                "Every dependency and its state.",
                {"200": json_answer(_list_of("dependencies", "Dependency"), "Dependencies.")},
                (503,),
            )
        },
        "/v1/dependencies/{name}": {
            "get": _operation(
                "getDependency",
                "A dependency.",
                {"200": json_answer(ref("Dependency"), "The dependency.")},
                (404, 503),
                name="dependency",
            ),
            "put": _operation(
                "putDependency",
                "Create or replace an http, tcp or sql dependency.",
                {
                    "201": json_answer(ref("Dependency"), "Created."),
                    "200": json_answer(ref("Dependency"), "Replaced."),
                },
                (400, 409, 413, 415, 422, 503),
                name="dependency",
                body="DependencyPut",
            ),
            "delete": {
                "operationId": "deleteDependency",
                "summary": "Delete a dependency defined by the API.",
                "parameters": _name("dependency"),
                "responses": {**deleted, **error_answers(404, 409, 503)},
            },
        },
        "/v1/dependencies/{name}/check": {
            "post": _operation(
                "checkDependency",
                "Check now; answers the state and the result.",
                {"200": json_answer(ref("Dependency"), "Checked.")},
                (404, 503),
                name="dependency",
            )
        },
    }
