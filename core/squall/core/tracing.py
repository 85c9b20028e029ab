"""Trace context: one request's journey from the gateway to the processor, in W3C ``traceparent`` form.

The gateway takes the client's ``traceparent`` header when it is valid (its own work becomes a child span of
the client's) or starts a new trace, and sends it on in the NATS headers of what it publishes; a processor
continues the trace of each message it handles. The current context lives in contextvars (each asyncio task
has its own), and a logging filter copies it, with the unit of work's ids, onto every log record.

Format (https://www.w3.org/TR/trace-context/): ``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

HEADER = "traceparent"

_VERSION_00 = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# A later version may append fields after the fourth; its first four keep this shape.
_LATER_VERSION = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    span_id: str
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """A new span of the same trace (this service's part of the work)."""
        return TraceContext(self.trace_id, _span_id(), self.sampled)


def _span_id() -> str:
    return secrets.token_hex(8)


def new_trace() -> TraceContext:
    return TraceContext(secrets.token_hex(16), _span_id())


def parse(value: str | None) -> TraceContext | None:
    """The context a ``traceparent`` header carries, or None when it is absent or invalid (then the
    receiver starts a new trace, as the specification says)."""
    if not value:
        return None
    value = value.strip()
    match = _VERSION_00.match(value)
    if match is not None:
        trace_id, span_id, flags = match.groups()
    else:
        later = _LATER_VERSION.match(value)
        if later is None or later.group(1) in ("00", "ff"):
            return None
        _, trace_id, span_id, flags, _ = later.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def continue_from(header: str | None) -> TraceContext:
    """This service's span: a child of the caller's when the header is valid, else a new trace."""
    parent = parse(header)
    return parent.child() if parent is not None else new_trace()


_current: ContextVar[TraceContext | None] = ContextVar("squall_trace", default=None)
_fields: ContextVar[dict[str, Any] | None] = ContextVar("squall_log_fields", default=None)


def current() -> TraceContext | None:
    return _current.get()


def begin(trace: TraceContext) -> None:
    """Make ``trace`` current for the rest of this asyncio task (a handler's whole request)."""
    _current.set(trace)


def current_traceparent() -> str | None:
    """The ``traceparent`` that carries the current trace to the next service (a NATS header, or a batch
    entry's field)."""
    trace = _current.get()
    return trace.traceparent if trace is not None else None


def trace_of(message_headers: dict[str, str] | None) -> TraceContext:
    """The span of handling a message: continues the trace its publisher sent."""
    return continue_from((message_headers or {}).get(HEADER))


@contextmanager
def work(trace: TraceContext | None, **fields: Any) -> Iterator[None]:
    """Within the block, log records carry the trace and the given fields (task_id, rid, processing,
    attempt)."""
    trace_token = _current.set(trace)
    fields_token = _fields.set({**(_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _fields.reset(fields_token)
        _current.reset(trace_token)


class ContextFilter(logging.Filter):
    """Copies the current trace and work fields onto each record; what a call passes in ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = record.__dict__
        trace = _current.get()
        if trace is not None and values.get("trace_id") is None:
            values["trace_id"] = trace.trace_id
            values["span_id"] = trace.span_id
        for name, value in (_fields.get() or {}).items():
            if values.get(name) is None:
                values[name] = value
        return True
