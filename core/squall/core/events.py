"""The event contract between the gateway, the scheduler and the processors.

Every message is a versioned model; subjects and stream names are constants; the JetStream message id
(``Nats-Msg-Id``) is derived from the business key so a second publish of the same thing is dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Literal, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field

REQUESTS_STREAM = "SQUALL_REQUESTS"
REQUEST_SUBMITTED = "squall.requests.submitted"

TASKS_STREAM = "SQUALL_TASKS"
POLL_TASK_PREFIX = "squall.tasks.poll"

REQUESTS_CONSUMER = "processor-requests"
TASKS_CONSUMER = "processor-tasks"


def poll_subject(processing: str) -> str:
    return f"{POLL_TASK_PREFIX}.{processing}"


class Item(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int
    job: str


class ItemFields(TypedDict):
    """An item as it travels in JSON, validated by the gateway before any model is built."""

    number: int
    job: str


class RequestSubmitted(BaseModel):
    """Published by the gateway once a request is accepted; a processor records it and its items."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    task_id: uuid.UUID
    rid: str
    items: list[Item]

    @property
    def msg_id(self) -> str:
        return request_msg_id(self.rid)


class PollTask(BaseModel):
    """Process up to ``batch_size`` pending items of ``processing``."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    task_id: uuid.UUID
    processing: str
    batch_size: int = Field(ge=1)
    # What makes this tick unique (schedule and due time); the message id derives from it.
    tick_key: str

    @property
    def msg_id(self) -> str:
        return f"poll:{self.processing}:{self.tick_key}"


def request_submitted_json(task_id: uuid.UUID, rid: str, items: Sequence[ItemFields]) -> bytes:
    """A ``RequestSubmitted`` event encoded straight from validated items: building a model per item took
    the gateway 15 % of its CPU on 100-item requests. The processor parses it with the model."""
    return orjson.dumps({"v": 1, "task_id": str(task_id), "rid": rid, "items": items})


def request_msg_id(rid: str) -> str:
    return f"request:{rid}"


def poll_task_id(processing: str, tick_key: str) -> uuid.UUID:
    """A tick's task id is a function of the tick, so a re-emitted tick is the same task."""
    return uuid.uuid5(_POLL_NAMESPACE, f"{processing}:{tick_key}")


_POLL_NAMESPACE = uuid.UUID("0b5f3f5e-7d53-4c2e-9d7a-51c1a1f0f001")
