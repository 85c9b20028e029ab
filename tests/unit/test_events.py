"""The event contract: deterministic message and task ids, strict models."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from squall.core.events import (
    Item,
    PollTask,
    RequestSubmitted,
    poll_subject,
    poll_task_id,
    request_msg_id,
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
    assert event.msg_id == request_msg_id("r-1") == "request:r-1"
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
