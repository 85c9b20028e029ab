"""Logging: JSON lines in containers, readable text locally. Context fields ride on ``extra=`` or come from
the current unit of work (``squall.core.tracing``: trace id, task_id, rid, processing, attempt)."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from squall.core.tracing import ContextFilter

CONTEXT_FIELDS = (
    "task_id",
    "rid",
    "processing",
    "attempt",
    "subject",
    "count",
    "error",
    "trace_id",
    "span_id",
)
# Text lines (local development) stay short: the span id only matters to tracing tools.
_TEXT_FIELDS = tuple(f for f in CONTEXT_FIELDS if f != "span_id")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "service": self.service,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = str(value) if not isinstance(value, int | float) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(message)s%(context)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        context = [f"{f}={record.__dict__[f]}" for f in _TEXT_FIELDS if record.__dict__.get(f) is not None]
        record.context = (" " + " ".join(context)) if context else ""
        return super().format(record)


def configure_logging(service: str, log_format: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter(service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado logs every request at INFO; our own metrics cover that.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def error_text(exc: BaseException) -> str:
    """An exception for a log line: its message, or its type where it has none (a timeout's is empty)."""
    return str(exc) or type(exc).__name__
