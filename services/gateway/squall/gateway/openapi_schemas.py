"""The components of the OpenAPI document: every body and answer, with their enums and limits taken from
``squall.core.rules`` and the settings (a test proves they are equal)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from squall.core.rules import (
    DEPENDENCY_KINDS,
    DEPENDENCY_STATES,
    ERROR_CODES,
    ITEM_STATES,
    MISFIRE_POLICIES,
    PROCESSING_MODES,
    RID_PATTERN_TEXT,
    TASK_KINDS,
    TASK_STATES,
    TICK_OUTCOMES,
)
from squall.gateway import admin_models, legacy
from squall.gateway.validation import INT64_MAX, INT64_MIN

INT64 = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}


def rid_schema(max_length: int) -> dict[str, Any]:
    """A rid: an int64, or a string of the rid pattern up to the gateway's ``max_rid_length``."""
    text = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": f"^{RID_PATTERN_TEXT}$"}
    return {"oneOf": [INT64, text]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_answers(*codes: int) -> dict[str, Any]:
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
    return {str(c): json_answer(ref("Error"), text[c]) for c in codes}


def component_schemas(processings: list[str], max_rid_length: int) -> dict[str, Any]:
    """The document's components: the bodies and answers of every route, built from ``rules``."""
    rid = rid_schema(max_rid_length)
    rid_or_null = {"oneOf": [*rid["oneOf"], {"type": "null"}]}
    job = {"type": "string", "enum": processings} if processings else {"type": "string"}
    item_state = {"type": "string", "enum": list(ITEM_STATES)}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": ref("ErrorDetail")}},
        "ErrorDetail": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {
                    "type": "string",
                    "enum": list(ERROR_CODES),
                    "description": "Machine-readable error code.",
                },
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
                "rid": {**rid_or_null, "description": "Your id of the request; assigned if absent or null."},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": ref("Item"),
                    "description": "At most SQUALL_GATEWAY__MAX_ITEMS (10,000 by default): more is a 413.",
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["task_id", "rid", "created", "links"],
            "properties": {
                "task_id": {"type": "string", "format": "uuid"},
                "rid": rid,
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
                "kind": {"type": "string", "enum": list(TASK_KINDS)},
                "state": {"type": "string", "enum": list(TASK_STATES)},
                "attempts": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "error": {"type": ["string", "null"]},
                "rid": rid_or_null,
                "processing": {"type": "string", "description": "Poll tasks only."},
                "items_processed": {"type": "integer", "description": "Poll tasks only."},
            },
        },
        "RequestStatus": {
            "type": "object",
            "required": ["rid", "task_id", "recorded", "processed", "counts", "items"],
            "properties": {
                "rid": rid,
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
                "rid": rid_or_null,
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
            "properties": {"task_id": {"type": "string"}, "rid": rid},
        },
        "LegacyUnknownTask": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {
                "status": {"type": "string", "const": legacy.UNKNOWN_TASK},
                "error": ref("ErrorDetail"),
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
                "rid": rid,
                "processed": {"type": "boolean"},
                "numbers": {"type": "array", "items": INT64},
                "jobtodo": {"type": "array", "items": {"type": "string"}},
                "results": {"type": "array", "description": "One per number; null while pending."},
            },
        },
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Stats": _stats_schema(),
        "Retention": _retention_schema(),
    }
    schemas.update(_admin_schemas())
    return schemas


def _retention_schema() -> dict[str, Any]:
    seconds = {"type": "number", "minimum": 0}
    tables = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    return {
        "type": "object",
        "required": [
            "finished_seconds",
            "dead_seconds",
            "interval_seconds",
            "oldest_finished_seconds",
            "table_bytes",
        ],
        "properties": {
            "finished_seconds": {**seconds, "description": "Finished work is kept this long (0: forever)."},
            "dead_seconds": {**seconds, "description": "Dead letters are kept this long (0: forever)."},
            "interval_seconds": {**seconds, "description": "How often the scheduler's leader runs a pass."},
            "oldest_finished_seconds": {
                "type": "object",
                "description": "Age of the oldest finished request and poll task kept, dead letters left out "
                "(null: none).",
                "additionalProperties": {"type": ["number", "null"]},
            },
            "table_bytes": {
                **tables,
                "description": "Bytes on disk of each table, indexes and TOAST included.",
            },
        },
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
        "ScheduleCreate": admin_models.ScheduleCreate,
        "SchedulePatch": admin_models.ScheduleFields,
        "ProcessingPatch": admin_models.ProcessingPatch,
        "DependencyPut": admin_models.DependencyPut,
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
            "misfire_policy": {"type": "string", "enum": list(MISFIRE_POLICIES)},
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
                        "outcome": {"type": "string", "enum": list(TICK_OUTCOMES)},
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
            "mode": {"type": "string", "enum": list(PROCESSING_MODES)},
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
            "kind": {"type": "string", "enum": list(DEPENDENCY_KINDS)},
            "target": {"type": "string", "description": "Passwords are masked."},
            "interval_seconds": {"type": "number"},
            "timeout_seconds": {"type": "number"},
            "failure_threshold": {"type": "integer"},
            "recovery_threshold": {"type": "integer"},
            "state": {"type": "string", "enum": list(DEPENDENCY_STATES)},
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
