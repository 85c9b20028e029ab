"""The OpenAPI 3.1 description of the gateway, served at ``/v1/openapi.json``.

A test checks that every route the application serves is described here, and the reverse.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from squall.core import admin
from squall.core.metrics import VERSION
from squall.gateway import legacy
from squall.gateway.validation import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH

INT64 = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
RID = {
    "oneOf": [
        INT64,
        {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"},
    ]
}


RID_OR_NULL = {"oneOf": [*RID["oneOf"], {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON.",
        404: "Not found.",
        409: "The rid was submitted before with other items.",
        413: "Too many items, or the body is too large.",
        415: "The body is not JSON.",
        422: "A field is invalid (the error names it).",
        503: "NATS or PostgreSQL is unreachable, or (a submission) the backlog is over its limit (code "
        "`overloaded`); retry after Retry-After seconds.",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def openapi_spec(processings: list[str]) -> dict[str, Any]:
    job = {"type": "string", "enum": processings} if processings else {"type": "string"}
    item_state = {"type": "string", "enum": ["pending", "running", "done", "failed"]}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _ref("ErrorDetail")}},
        "ErrorDetail": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string", "description": "Machine-readable error code."},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"], "description": "The offending field, if any."},
            },
        },
        "Item": {
            "type": "object",
            "additionalProperties": False,
            "required": ["number", "job"],
            "properties": {"number": INT64, "job": job},
        },
        "Submission": {
            "type": "object",
            "additionalProperties": False,
            "required": ["items"],
            "properties": {
                "rid": {**RID_OR_NULL, "description": "Your id of the request; assigned if absent or null."},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref("Item"),
                    "description": "At most SQUALL_GATEWAY__MAX_ITEMS (10,000 by default): more is a 413.",
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["task_id", "rid", "created", "links"],
            "properties": {
                "task_id": {"type": "string", "format": "uuid"},
                "rid": RID,
                "created": {"type": "boolean", "description": "False for an identical re-submission."},
                "links": {
                    "type": "object",
                    "properties": {"task": {"type": "string"}, "request": {"type": "string"}},
                },
            },
        },
        "Task": {
            "type": "object",
            "required": ["task_id", "kind", "state", "attempts", "created_at", "updated_at", "error", "rid"],
            "properties": {
                "task_id": {"type": "string", "format": "uuid"},
                "kind": {"type": "string", "enum": ["request", "poll"]},
                "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "dead"]},
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "error": {"type": ["string", "null"]},
                "rid": RID_OR_NULL,
                "processing": {"type": "string", "description": "Poll tasks only."},
                "items_processed": {"type": "integer", "description": "Poll tasks only."},
            },
        },
        "RequestStatus": {
            "type": "object",
            "required": ["rid", "task_id", "recorded", "processed", "counts", "items"],
            "properties": {
                "rid": RID,
                "task_id": {"type": "string", "format": "uuid"},
                "recorded": {"type": "boolean", "description": "A processor has recorded the items."},
                "processed": {"type": "boolean", "description": "No item is pending any more."},
                "counts": {
                    "type": "object",
                    "required": ["pending", "done", "failed"],
                    "properties": {k: {"type": "integer"} for k in ("pending", "done", "failed")},
                },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["number", "job", "state", "result", "error"],
                        "properties": {
                            "number": INT64,
                            "job": {"type": "string"},
                            "state": item_state,
                            "result": {"description": "The processing's result (any JSON), null until done."},
                            "error": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "LegacySubmission": {
            "type": "object",
            "required": ["numbers", "jobtodo"],
            "properties": {
                "rid": RID_OR_NULL,
                "numbers": {"type": "array", "minItems": 1, "items": INT64},
                "jobtodo": {
                    "type": "array",
                    "minItems": 1,
                    "items": job,
                    "description": "One job per number, or one job for all numbers.",
                },
            },
        },
        "LegacyLookup": {
            "type": "object",
            "properties": {"task_id": {"type": "string"}, "rid": RID},
        },
        "LegacyUnknownTask": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {
                "status": {"type": "string", "const": legacy.UNKNOWN_TASK},
                "error": _ref("ErrorDetail"),
            },
        },
        "LegacyStatus": {
            "type": "object",
            "required": ["status", "task_id", "rid", "processed", "numbers", "jobtodo", "results"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": [legacy.STARTED, legacy.DONE],
                    "description": "Starts with 'done' once the request is recorded.",
                },
                "task_id": {"type": "string", "format": "uuid"},
                "rid": RID,
                "processed": {"type": "boolean"},
                "numbers": {"type": "array", "items": INT64},
                "jobtodo": {"type": "array", "items": {"type": "string"}},
                "results": {"type": "array", "description": "One per number; null while pending."},
            },
        },
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Stats": _stats_schema(),
    }
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
                    "content": {"application/json": {"schema": _ref("Submission")}},
                },
                "responses": {
                    "202": _json(_ref("Accepted"), "Accepted; processing follows."),
                    "200": _json(_ref("Accepted"), "An identical earlier submission: the same task."),
                    **_errors(400, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/requests/{rid}": {
            "get": {
                "operationId": "getRequest",
                "summary": "A request's items, their states and results.",
                "parameters": [{"name": "rid", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("RequestStatus"), "The request."), **_errors(404, 503)},
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
                            "enum": ["queued", "running", "succeeded", "failed", "dead"],
                        },
                    },
                    {
                        "name": "kind",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["request", "poll"]},
                    },
                    {
                        "name": "processing",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 63},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
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
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["tasks", "next_cursor"],
                            "properties": {
                                "tasks": {"type": "array", "items": _ref("Task")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "A page of tasks.",
                    ),
                    **_errors(422, 503),
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
                "responses": {"202": _json(_ref("Task"), "Queued again."), **_errors(404, 409, 503)},
            }
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "operationId": "getTask",
                "summary": "A task's state (request tasks resolve as soon as POST answered).",
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _json(_ref("Task"), "The task."), **_errors(404, 503)},
            }
        },
        "/v1/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Request and item totals (at most a second old; cheap to poll).",
                "responses": {"200": _json(_ref("Stats"), "The totals."), **_errors(503)},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
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
                    "content": {"application/json": {"schema": _ref("LegacySubmission")}},
                },
                "responses": {
                    "201": _json(
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
                                    "properties": {"task_id": {"type": "string"}, "rid": RID},
                                },
                            ]
                        },
                        "Accepted (also an identical submission again).",
                    ),
                    **_errors(400, 409, 413, 422, 503),
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
                        "application/json": {"schema": _ref("LegacyLookup")},
                        "application/x-www-form-urlencoded": {"schema": _ref("LegacyLookup")},
                    },
                },
                "responses": {
                    "201": _json(
                        {"anyOf": [_ref("LegacyStatus"), _ref("LegacyUnknownTask")]},
                        "The request, or (as the original answered) a task id it does not know.",
                    ),
                    "200": _json(
                        {"type": "string", "const": legacy.UNKNOWN_RID},
                        "No request with this rid (the original's answer).",
                    ),
                    "400": _json(_ref("Error"), "Neither task_id nor rid given, or a malformed body."),
                    **_errors(413, 422, 503),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive.",
                "responses": {"200": _json(_ref("Status"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "NATS and PostgreSQL are reachable.",
                "responses": {
                    "200": _json(_ref("Status"), "Ready."),
                    "503": _json({"type": "object"}, "Not ready; `problems` says why."),
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
    schemas.update(_admin_schemas())
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


def _stats_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "type": "object",
        "required": ["requests", "items", "dead_tasks", "backlog"],
        "properties": {
            "requests": {
                "type": "object",
                "required": ["accepted", "processed", "pending", "recorded"],
                "properties": {
                    "accepted": {**count, "description": "Every request the gateways accepted."},
                    "processed": {**count, "description": "Requests whose every item has a result."},
                    "pending": {**count, "description": "accepted - processed."},
                    "recorded": {**count, "description": "Requests a processor has recorded."},
                },
            },
            "items": {
                "type": "object",
                "description": "By processing: items recorded by a processor, by state (pending counts "
                "running items too).",
                "additionalProperties": {
                    "type": "object",
                    "required": ["pending", "done", "failed"],
                    "properties": {k: count for k in ("pending", "done", "failed")},
                },
            },
            "dead_tasks": {
                "type": "object",
                "description": "By processing: dead poll tasks (replay with POST /v1/tasks/{id}/retry).",
                "additionalProperties": count,
            },
            "backlog": {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "items": {
                        **count,
                        "description": "Items accepted and not processed yet (in requests not recorded, "
                        "or recorded and pending): what admission control bounds.",
                    }
                },
            },
        },
    }


def _admin_schemas() -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {
        "ScheduleCreate": admin.ScheduleCreate,
        "SchedulePatch": admin.ScheduleFields,
        "ProcessingPatch": admin.ProcessingPatch,
        "DependencyPut": admin.DependencyPut,
    }
    found = {name: model.model_json_schema() for name, model in models.items()}
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    found["Schedule"] = {
        "type": "object",
        "required": ["name", "processing", "enabled", "batch_size", "misfire_policy", "next_due_at"],
        "properties": {
            "name": {"type": "string"},
            "processing": {"type": "string"},
            "interval_seconds": {"type": ["number", "null"]},
            "cron": {"type": ["string", "null"]},
            "timezone": {"type": "string"},
            "enabled": {"type": "boolean"},
            "batch_size": {"type": "integer"},
            "max_batches_per_tick": {"type": "integer"},
            "misfire_policy": {"type": "string", "enum": ["skip", "run_once", "catch_up"]},
            "catch_up_limit": {"type": "integer"},
            "jitter_seconds": {"type": "number"},
            "next_due_at": timestamp,
            "origin": {"type": "string", "enum": ["default", "api"]},
            "recent_ticks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "due_at": timestamp,
                        "outcome": {"type": "string", "enum": ["emitted", "held", "skipped", "missed"]},
                        "tasks": {"type": "integer"},
                        "detail": {"type": ["string", "null"]},
                        "emitted_at": timestamp,
                    },
                },
            },
        },
    }
    found["Schedulers"] = {
        "type": "object",
        "required": ["leader", "instances"],
        "properties": {
            "leader": {"type": ["string", "null"]},
            "instances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "host", "started_at", "last_seen"],
                    "properties": {
                        "id": {"type": "string"},
                        "host": {"type": "string"},
                        "started_at": timestamp,
                        "last_seen": timestamp,
                    },
                },
            },
        },
    }
    found["Processing"] = {
        "type": "object",
        "required": ["name", "mode", "batch_size", "timeout_seconds", "dependencies", "paused", "pending"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["python", "command"]},
            "mode": {"type": "string", "enum": ["batch", "immediate"]},
            "batch_size": {"type": "integer"},
            "timeout_seconds": {"type": "number"},
            "max_attempts": {"type": "integer"},
            "interval_seconds": {"type": ["number", "null"]},
            "dependencies": {"type": "array", "items": {"type": "string"}},
            "paused": {"type": "boolean"},
            "pending": {"type": "integer", "description": "Items claimable now."},
        },
    }
    found["Dependency"] = {
        "type": "object",
        "required": ["name", "kind", "target", "state"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["http", "tcp", "sql", "command"]},
            "target": {"type": "string", "description": "Passwords are masked."},
            "interval_seconds": {"type": "number"},
            "timeout_seconds": {"type": "number"},
            "failure_threshold": {"type": "integer"},
            "recovery_threshold": {"type": "integer"},
            "state": {"type": "string", "enum": ["unknown", "up", "down"]},
            "since": timestamp,
            "last_error": {"type": ["string", "null"]},
            "last_checked_at": timestamp,
            "consecutive_failures": {"type": "integer"},
            "consecutive_successes": {"type": "integer"},
            "origin": {"type": "string", "enum": ["config", "api"]},
            "result": {
                "type": "object",
                "description": "Check-now only.",
                "properties": {
                    "ok": {"type": "boolean"},
                    "error": {"type": ["string", "null"]},
                    "duration_seconds": {"type": "number"},
                },
            },
        },
    }
    return found


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": _ref(item)}}}


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


def _admin_paths() -> dict[str, Any]:
    deleted = {"204": {"description": "Deleted."}}
    return {
        "/v1/schedules": {
            "get": {
                "operationId": "listSchedules",
                "summary": "Every schedule.",
                "responses": {"200": _json(_list_of("schedules", "Schedule"), "Schedules."), **_errors(503)},
            },
            "post": {
                "operationId": "createSchedule",
                "summary": "Create a schedule (interval or cron).",
                "requestBody": _body("ScheduleCreate"),
                "responses": {
                    "201": _json(_ref("Schedule"), "Created."),
                    **_errors(400, 409, 413, 415, 422, 503),
                },
            },
        },
        "/v1/schedules/{name}": {
            "get": {
                "operationId": "getSchedule",
                "summary": "A schedule and its latest ticks.",
                "parameters": _name("schedule"),
                "responses": {"200": _json(_ref("Schedule"), "The schedule."), **_errors(404, 503)},
            },
            "patch": {
                "operationId": "patchSchedule",
                "summary": "Change a schedule.",
                "parameters": _name("schedule"),
                "requestBody": _body("SchedulePatch"),
                "responses": {
                    "200": _json(_ref("Schedule"), "Changed."),
                    **_errors(400, 404, 413, 415, 422, 503),
                },
            },
            "delete": {
                "operationId": "deleteSchedule",
                "summary": "Delete a schedule and its tick log.",
                "parameters": _name("schedule"),
                "responses": {**deleted, **_errors(404, 503)},
            },
        },
        "/v1/schedules/{name}/run": {
            "post": {
                "operationId": "runSchedule",
                "summary": "Tick now (the leader fires it at once).",
                "parameters": _name("schedule"),
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "properties": {
                                "schedule": {"type": "string"},
                                "due_at": {"type": "string", "format": "date-time"},
                            },
                        },
                        "Due now.",
                    ),
                    **_errors(404, 503),
                },
            },
        },
        "/v1/schedulers": {
            "get": {
                "operationId": "listSchedulers",
                "summary": "Scheduler replicas and which one leads.",
                "responses": {
                    "200": _json(_ref("Schedulers"), "Replicas seen in the last 30 s."),
                    **_errors(503),
                },
            },
        },
        "/v1/processings": {
            "get": {
                "operationId": "listProcessings",
                "summary": "Every registered processing.",
                "responses": {
                    "200": _json(_list_of("processings", "Processing"), "Processings."),
                    **_errors(503),
                },
            },
        },
        "/v1/processings/{name}": {
            "get": {
                "operationId": "getProcessing",
                "summary": "A processing.",
                "parameters": _name("processing"),
                "responses": {"200": _json(_ref("Processing"), "The processing."), **_errors(404, 503)},
            },
            "patch": {
                "operationId": "patchProcessing",
                "summary": "Pause or resume; set its dependencies.",
                "parameters": _name("processing"),
                "requestBody": _body("ProcessingPatch"),
                "responses": {
                    "200": _json(_ref("Processing"), "Changed."),
                    **_errors(400, 404, 413, 415, 422, 503),
                },
            },
        },
        "/v1/dependencies": {
            "get": {
                "operationId": "listDependencies",
                "summary": "Every dependency and its state.",
                "responses": {
                    "200": _json(_list_of("dependencies", "Dependency"), "Dependencies."),
                    **_errors(503),
                },
            },
        },
        "/v1/dependencies/{name}": {
            "get": {
                "operationId": "getDependency",
                "summary": "A dependency.",
                "parameters": _name("dependency"),
                "responses": {"200": _json(_ref("Dependency"), "The dependency."), **_errors(404, 503)},
            },
            "put": {
                "operationId": "putDependency",
                "summary": "Create or replace an http, tcp or sql dependency.",
                "parameters": _name("dependency"),
                "requestBody": _body("DependencyPut"),
                "responses": {
                    "201": _json(_ref("Dependency"), "Created."),
                    "200": _json(_ref("Dependency"), "Replaced."),
                    **_errors(400, 409, 413, 415, 422, 503),
                },
            },
            "delete": {
                "operationId": "deleteDependency",
                "summary": "Delete a dependency defined by the API.",
                "parameters": _name("dependency"),
                "responses": {**deleted, **_errors(404, 409, 503)},
            },
        },
        "/v1/dependencies/{name}/check": {
            "post": {
                "operationId": "checkDependency",
                "summary": "Check now; answers the state and the result.",
                "parameters": _name("dependency"),
                "responses": {"200": _json(_ref("Dependency"), "Checked."), **_errors(404, 503)},
            },
        },
    }
