"""The event contract: deterministic message and task ids, strict models."""

from __future__ import annotations

import uuid

import orjson
import pytest
from pydantic import ValidationError

from squall.core.events import (
    Item,
    ItemFields,
    MalformedEvent,
    PollTask,
    RequestEvent,
    RequestSubmitted,
    poll_subject,
    poll_task_id,
    read_request_events,
    read_request_submitted,
    request_batch_json,
    request_msg_id,
    request_submitted_json,
)


def poll(processing: str, tick_key: str) -> PollTask:
    return PollTask(
        task_id=poll_task_id(processing, tick_key), processing=processing, batch_size=100, tick_key=tick_key
    )


def test_poll_ids_are_deterministic() -> None:
    first, second = poll("sum", "2024-01-01T00:00:02"), poll("sum", "2024-01-01T00:00:02")
    assert first.msg_id == second.msg_id == "poll:sum:2024-01-01T00:00:02"
    assert first.task_id == second.task_id
    assert poll_task_id("sum", "t") == poll_task_id("sum", "t")
    assert poll_task_id("sum", "t").version == 5


@pytest.mark.parametrize(("processing", "tick_key"), [("mul", "t1"), ("sum", "t2"), ("square", "t10")])
def test_poll_ids_differ_for_another_tick(processing: str, tick_key: str) -> None:
    base = poll("sum", "t1")
    other = poll(processing, tick_key)
    assert other.msg_id != base.msg_id
    assert other.task_id != base.task_id


def test_poll_subject() -> None:
    assert poll_subject("sum") == "squall.tasks.poll.sum"


def test_poll_task_validation() -> None:
    with pytest.raises(ValidationError):
        PollTask(task_id=uuid.uuid4(), processing="sum", batch_size=0, tick_key="t")
    with pytest.raises(ValidationError):
        PollTask.model_validate(
            {"task_id": str(uuid.uuid4()), "processing": "sum", "batch_size": 1, "tick_key": "t", "x": 1}
        )


def submitted(**extra: object) -> dict[str, object]:
    return {
        "task_id": str(uuid.uuid4()),
        "rid": "r-1",
        "items": [{"number": 1, "job": "sum"}],
        **extra,
    }


def test_request_submitted_round_trip() -> None:
    event = RequestSubmitted.model_validate(submitted())
    assert event.v == 1
    assert event.items == [Item(number=1, job="sum")]
    assert event.msg_id == request_msg_id("r-1", event.task_id) == f"request:r-1:{event.task_id}"
    assert RequestSubmitted.model_validate_json(event.model_dump_json()) == event


def test_request_submitted_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        RequestSubmitted.model_validate(submitted(color="red"))


def test_request_submitted_rejects_unknown_item_fields() -> None:
    doc = submitted()
    doc["items"] = [{"number": 1, "job": "sum", "color": "red"}]
    with pytest.raises(ValidationError):
        RequestSubmitted.model_validate(doc)


def test_request_submitted_rejects_another_version() -> None:
    with pytest.raises(ValidationError):
        RequestSubmitted.model_validate(submitted(v=2))


def test_item_is_frozen() -> None:
    item = Item(number=1, job="sum")
    with pytest.raises(ValidationError):
        item.number = 2  # type: ignore[misc]
    assert hash(item) == hash(Item(number=1, job="sum"))


def test_the_processor_reads_what_the_gateway_writes() -> None:
    task_id = uuid.uuid4()
    items: list[ItemFields] = [{"number": -(2**63), "job": "sum"}, {"number": 2**63 - 1, "job": "mul"}]
    event = read_request_submitted(request_submitted_json(task_id, "r-1", items))
    assert event == RequestEvent(task_id, "r-1", [-(2**63), 2**63 - 1], ["sum", "mul"])
    assert RequestSubmitted.model_validate_json(request_submitted_json(task_id, "r-1", items)).items == [
        Item(number=n, job=j) for n, j in zip(event.numbers, event.jobs, strict=True)
    ]


@pytest.mark.parametrize(
    "doc",
    [
        submitted(color="red"),
        submitted(v=2),
        submitted(task_id="not-a-uuid"),
        submitted(task_id=7),
        submitted(rid=5),
        submitted(items={"number": 1, "job": "sum"}),
        submitted(items=[{"number": 1}]),
        submitted(items=[{"number": 1, "job": "sum", "color": "red"}]),
        submitted(items=[{"number": 1, "job": 3}]),
        submitted(items=[[1, "sum"]]),
        submitted(items=["sum"]),
        {"rid": "r", "items": [{"number": 1, "job": "sum"}]},
        [1, 2],
    ],
)
def test_a_malformed_event_is_refused_by_the_reader_as_by_the_model(doc: object) -> None:
    data = orjson.dumps(doc)
    with pytest.raises(ValidationError):
        RequestSubmitted.model_validate_json(data)
    with pytest.raises(MalformedEvent):
        read_request_submitted(data)


@pytest.mark.parametrize(
    "items",
    [[], [{"number": 5.0, "job": "sum"}], [{"number": "1", "job": "sum"}], [{"number": True, "job": "sum"}]],
)
def test_the_reader_is_stricter_than_the_model_where_the_gateway_never_writes(items: object) -> None:
    data = orjson.dumps(submitted(items=items))
    RequestSubmitted.model_validate_json(data)  # lax: no item, 5.0, "1", true
    with pytest.raises(MalformedEvent):
        read_request_submitted(data)


def test_the_reader_refuses_what_is_not_json() -> None:
    with pytest.raises(MalformedEvent, match="not JSON"):
        read_request_submitted(b'{"task_id": ')


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_batch_carries_each_request_with_its_trace_and_a_single_event_reads_as_one() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    one: list[ItemFields] = [{"number": 1, "job": "sum"}]
    two: list[ItemFields] = [{"number": 2**63 - 1, "job": "mul"}, {"number": -5, "job": "sum"}]
    batch = request_batch_json(
        [
            (request_submitted_json(first, "a", one), TRACEPARENT),
            (request_submitted_json(second, "b", two), None),
        ]
    )
    assert read_request_events(batch) == [
        (RequestEvent(first, "a", [1], ["sum"]), TRACEPARENT),
        (RequestEvent(second, "b", [2**63 - 1, -5], ["mul", "sum"]), None),
    ]
    assert read_request_events(request_submitted_json(first, "a", one)) == [
        (RequestEvent(first, "a", [1], ["sum"]), None)
    ]


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 1, "requests": []},
        {"v": 1, "requests": {"event": submitted()}},
        {"v": 2, "requests": [{"event": submitted(), "traceparent": None}]},
        {"v": 1, "requests": [{"event": submitted(), "traceparent": None}], "color": "red"},
        {"v": 1, "requests": [submitted()]},
        {"v": 1, "requests": [{"traceparent": TRACEPARENT}]},
        {"v": 1, "requests": [{"event": submitted(), "traceparent": 7}]},
        {"v": 1, "requests": [{"event": submitted(), "traceparent": None, "color": "red"}]},
        {"v": 1, "requests": [{"event": "{}", "traceparent": None}]},
        # One malformed request spoils its whole batch (dropped; its requests wait for the sweep).
        {
            "v": 1,
            "requests": [
                {"event": submitted(), "traceparent": None},
                {"event": submitted(items=[{"number": 1}]), "traceparent": None},
            ],
        },
    ],
)
def test_a_malformed_batch_is_refused(doc: object) -> None:
    with pytest.raises(MalformedEvent):
        read_request_events(orjson.dumps(doc))
