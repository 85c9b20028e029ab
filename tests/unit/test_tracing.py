"""traceparent parsing, the current trace in contextvars, and log lines that carry it."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from squall.core import tracing
from squall.core.logs import JsonFormatter, TextFormatter

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_a_valid_traceparent_is_parsed() -> None:
    parsed = tracing.parse(f"00-{TRACE}-{PARENT}-01")
    assert parsed == tracing.TraceContext(TRACE, PARENT, sampled=True)
    assert tracing.parse(f"00-{TRACE}-{PARENT}-00") == tracing.TraceContext(TRACE, PARENT, sampled=False)
    assert parsed is not None and parsed.traceparent == f"00-{TRACE}-{PARENT}-01"


def test_a_later_version_keeps_its_first_four_fields() -> None:
    assert tracing.parse(f"cc-{TRACE}-{PARENT}-01-what-comes-next") == tracing.TraceContext(TRACE, PARENT)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{PARENT}-01",
    ],
)
def test_an_invalid_traceparent_is_ignored(header: str | None) -> None:
    assert tracing.parse(header) is None
    started = tracing.continue_from(header)
    assert len(started.trace_id) == 32 and started.trace_id != TRACE


def test_continuing_keeps_the_trace_with_a_new_span() -> None:
    mine = tracing.continue_from(f"00-{TRACE}-{PARENT}-01")
    assert mine.trace_id == TRACE and mine.span_id != PARENT and len(mine.span_id) == 16
    assert tracing.trace_of({"traceparent": mine.traceparent}).trace_id == TRACE
    assert tracing.trace_of(None).trace_id != TRACE


async def test_each_task_has_its_own_current_trace() -> None:
    async def handle(header: str) -> str | None:
        tracing.begin(tracing.continue_from(header))
        await asyncio.sleep(0.01)
        return tracing.current_traceparent()

    first, second = await asyncio.gather(
        asyncio.create_task(handle(f"00-{TRACE}-{PARENT}-01")),
        asyncio.create_task(handle(f"00-{'1' * 32}-{PARENT}-01")),
    )
    assert first is not None and first.split("-")[1] == TRACE
    assert second is not None and second.split("-")[1] == "1" * 32


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("squall.processor", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_log_lines_carry_the_current_work() -> None:
    context = tracing.TraceContext(TRACE, PARENT)
    with tracing.work(context, task_id="t-1", processing="sum", attempt=2):
        record = _record("processed")
        assert tracing.ContextFilter().filter(record)
        explicit = _record("recorded", rid="r-9", trace_id="f" * 32)
        tracing.ContextFilter().filter(explicit)
    line = orjson.loads(JsonFormatter("processor").format(record))
    assert line["service"] == "processor" and line["level"] == "info" and line["msg"] == "processed"
    assert (line["trace_id"], line["span_id"], line["task_id"], line["processing"], line["attempt"]) == (
        TRACE,
        PARENT,
        "t-1",
        "sum",
        2,
    )
    assert orjson.loads(JsonFormatter("p").format(explicit))["trace_id"] == "f" * 32  # extra= wins
    text = TextFormatter("processor").format(record)
    assert f"trace_id={TRACE}" in text and "task_id=t-1" in text and "span_id" not in text
    # Outside the block nothing is added.
    after = _record("later")
    tracing.ContextFilter().filter(after)
    assert "trace_id" not in orjson.loads(JsonFormatter("p").format(after))
