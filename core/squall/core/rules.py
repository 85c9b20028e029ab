"""Every rule that more than one place enforces, defined once.

The gateway's validation, the database's CHECK constraints (``db.py``; a test compares them with the
migrated schema) and the OpenAPI document are built from these, so they cannot drift apart. Migrations keep
their own copies on purpose: a migration states what the schema was at its revision.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

TaskState = Literal["queued", "running", "succeeded", "failed", "dead"]
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)
# A task in one of these states will not change again unless an operator replays it.
TASK_FINAL_STATES: tuple[TaskState, ...] = ("succeeded", "failed", "dead")

TaskKind = Literal["request", "poll"]
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)

ItemState = Literal["pending", "running", "done", "failed"]
ITEM_STATES: tuple[ItemState, ...] = get_args(ItemState)

DependencyKind = Literal["http", "tcp", "sql", "command"]
DEPENDENCY_KINDS: tuple[DependencyKind, ...] = get_args(DependencyKind)
DependencyState = Literal["unknown", "up", "down"]
DEPENDENCY_STATES: tuple[DependencyState, ...] = get_args(DependencyState)

ProcessingMode = Literal["batch", "immediate"]
PROCESSING_MODES: tuple[ProcessingMode, ...] = get_args(ProcessingMode)

MisfirePolicy = Literal["skip", "run_once", "catch_up"]
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = get_args(MisfirePolicy)
TickOutcome = Literal["emitted", "held", "skipped", "missed"]
TICK_OUTCOMES: tuple[TickOutcome, ...] = get_args(TickOutcome)

# The longest name of a processing, schedule or dependency (a PostgreSQL identifier's length).
NAME_MAX_LENGTH = 63

Scope = Literal["submit", "read", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
# What an address in SQUALL_AUTH__LEGACY_TRUSTED_NETWORKS may do on /number_request without a token.
LEGACY_SCOPES: frozenset[Scope] = frozenset(("submit", "read"))

# A string rid: a letter or digit, then letters, digits and . _ : @ - (its length is a setting).
RID_PATTERN_TEXT = r"[A-Za-z0-9][A-Za-z0-9._:@-]*"
RID_PATTERN = re.compile(RID_PATTERN_TEXT)

# The longest page of GET /v1/tasks.
MAX_TASK_PAGE = 500
# JSON nested deeper than this is refused before its fields are read.
MAX_JSON_DEPTH = 32

# Every machine-readable error code an answer may carry ({"error": {"code": …}}).
ErrorCode = Literal[
    "body_too_large",
    "configured",
    "empty",
    "error",
    "exists",
    "forbidden",
    "internal",
    "invalid_json",
    "invalid_rid",
    "invalid_type",
    "invalid_value",
    "length_mismatch",
    "method_not_allowed",
    "missing_field",
    "not_dead",
    "not_found",
    "out_of_range",
    "overloaded",
    "rate_limited",
    "rid_conflict",
    "too_deep",
    "too_many_connections",
    "too_many_items",
    "unauthorized",
    "unavailable",
    "unknown_dependency",
    "unknown_field",
    "unknown_job",
    "unsupported_media_type",
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# Retry-After of a 503: a dependency (NATS, PostgreSQL) unreachable, or every connection slot taken, is
# usually a blip; a backlog over its limit drains more slowly.
RETRY_AFTER_UNAVAILABLE_SECONDS = 2
RETRY_AFTER_OVERLOADED_SECONDS = 5
