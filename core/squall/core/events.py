"""The event contract between the gateway, the scheduler and the processors.

Every message is a versioned model; subjects and stream names are constants; the JetStream message id
(``Nats-Msg-Id``) is derived from the business key so a second publish of the same thing is dropped.

The readers are strict (an unknown field or version is malformed), so a change here breaks the previous
release's consumers during a rolling upgrade unless it lands in two releases, readers first
(docs/design.md, "Releases and upgrades"); ``tests/upgrade/events/`` holds each release's messages.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

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
        return request_msg_id(self.rid, self.task_id)


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
    """A ``RequestSubmitted`` event encoded straight from validated items: building a model per item was a
    large share of the gateway's CPU on 100-item requests. The processor reads it with
    :func:`read_request_events` (alone or in a group), a request's status read with
    :func:`read_request_submitted`."""
    return orjson.dumps({"v": 1, "task_id": str(task_id), "rid": rid, "items": items})


class MalformedEvent(ValueError):
    """An event that does not follow its contract."""


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A ``RequestSubmitted`` as the processor reads it: the items as two columns, no object per item."""

    task_id: uuid.UUID
    rid: str
    numbers: list[int]
    jobs: list[str]


_REQUEST_FIELDS = frozenset(RequestSubmitted.model_fields)


def read_request_submitted(data: bytes) -> RequestEvent:
    """Decode a ``RequestSubmitted`` event and check it against the model's contract (see
    :func:`_request_event`). Raises :class:`MalformedEvent`."""
    return _request_event(_json_object(data))


def read_request_events(data: bytes) -> list[tuple[RequestEvent, str | None]]:
    """The requests a message on :data:`REQUEST_SUBMITTED` carries: one ``RequestSubmitted`` event, or a
    :func:`request_batch_json` envelope of several, each with the W3C ``traceparent`` its gateway sent
    (None for a single event: its trace travels in the message's headers). Raises :class:`MalformedEvent`
    when the message or any of its requests breaks the contract."""
    doc = _json_object(data)
    if "requests" not in doc:
        return [(_request_event(doc), None)]
    if not doc.keys() <= _BATCH_FIELDS or doc.get("v", 1) != 1:
        raise MalformedEvent(f"unknown fields or version in a batch: {sorted(doc)[:8]}")
    entries = doc["requests"]
    if type(entries) is not list or not entries:
        raise MalformedEvent("requests is not a non-empty array")
    read: list[tuple[RequestEvent, str | None]] = []
    for entry in entries:
        if type(entry) is not dict or not entry.keys() <= _ENTRY_FIELDS or "event" not in entry:
            raise MalformedEvent("a batch entry must be an object with an event and a traceparent")
        traceparent = entry.get("traceparent")
        if traceparent is not None and type(traceparent) is not str:
            raise MalformedEvent("a batch entry's traceparent is not a string")
        event = entry["event"]
        if type(event) is not dict:
            raise MalformedEvent("a batch entry's event is not a JSON object")
        read.append((_request_event(event), traceparent))
    return read


def request_batch_json(entries: Sequence[tuple[bytes, str | None]]) -> bytes:
    """Several ``RequestSubmitted`` events (encoded already) in one message, each with its trace context:
    one publish, one JetStream ack, one delivery and one processor ack for the whole group instead of four
    messages per request (docs/design.md)."""
    return orjson.dumps(
        {
            "v": 1,
            "requests": [{"event": orjson.Fragment(event), "traceparent": tp} for event, tp in entries],
        }
    )


_BATCH_FIELDS = frozenset(("v", "requests"))
_ENTRY_FIELDS = frozenset(("event", "traceparent"))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc.msg}") from None
    if type(doc) is not dict:
        raise MalformedEvent("not a JSON object")
    return doc


def _request_event(doc: dict[str, Any]) -> RequestEvent:
    """A decoded ``RequestSubmitted`` checked against the model's contract (no unknown field, ``v`` 1, a
    UUID task id, a string rid, at least one item of exactly an integer number and a string job) without
    building a model per item: C-level passes (``map`` over the items, sets of their types) cost less than
    pydantic or item-by-item checks. Stricter than the model where the
    model is lax (no item; a number written ``5.0``, ``"5"`` or ``true``), which the gateway never
    writes."""
    if not doc.keys() <= _REQUEST_FIELDS or doc.get("v", 1) != 1:
        raise MalformedEvent(f"unknown fields or version: {sorted(doc)[:8]}")
    rid, items = doc.get("rid"), doc.get("items")
    if type(rid) is not str:
        raise MalformedEvent("rid is not a string")
    if type(items) is not list or not items:
        raise MalformedEvent("items is not a non-empty array")
    try:
        task_id = uuid.UUID(doc["task_id"])
        # A non-object item fails here too: a list or a string cannot be indexed by a key.
        numbers = list(map(_NUMBER, items))
        jobs = list(map(_JOB, items))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise MalformedEvent("a task_id, an item's number or its job is missing or malformed") from None
    # Exact types: a bool is not an int here, nor a str subclass a str.
    if set(map(type, numbers)) != _INT or set(map(type, jobs)) != _STR or set(map(len, items)) != _TWO:
        raise MalformedEvent("every item must be exactly an integer number and a string job")
    return RequestEvent(task_id, rid, numbers, jobs)


_NUMBER = operator.itemgetter("number")
_JOB = operator.itemgetter("job")
_INT, _STR, _TWO = {int}, {str}, {2}


def request_msg_id(rid: str, task_id: uuid.UUID) -> str:
    """The JetStream message id of a request's event: every publish of one acceptance (a retry, a
    re-submission, the processors' sweep) is the same message. With the task id in it, a rid accepted
    again after a withdrawn attempt (503) is a new message: that attempt's event may have reached JetStream
    all the same (its ack lost, or sent once the broker came back), and under the rid alone the new
    event would be dropped as its duplicate for the whole de-duplication window."""
    return f"request:{rid}:{task_id}"


def poll_task_id(processing: str, tick_key: str) -> uuid.UUID:
    """A tick's task id is a function of the tick, so a re-emitted tick is the same task."""
    return uuid.uuid5(_POLL_NAMESPACE, f"{processing}:{tick_key}")


_POLL_NAMESPACE = uuid.UUID("0b5f3f5e-7d53-4c2e-9d7a-51c1a1f0f001")
