"""OpenTelemetry export of Squall's traces: optional (``pip install 'squall[otel]'``), off by default.

``squall.core.tracing`` carries the W3C trace context whether or not spans are exported. When
``SQUALL_OTEL__ENABLED=true``, :func:`setup` builds an SDK tracer exporting over OTLP/HTTP, and the
services open spans at the points a request crosses a boundary:

* gateway: a SERVER span per intake (``POST /v1/requests``, ``POST /number_request``, a replay), the child
  of the client's ``traceparent``; a PRODUCER span per publish to JetStream, whose context is what the NATS
  headers carry;
* processor: a CONSUMER span per request event recorded and per poll task run, the child of the context in
  the message's headers: one trace covers client → gateway → NATS → processor.

Each span's ids become the current :class:`~squall.core.tracing.TraceContext`, so the ``trace_id`` and
``span_id`` of log lines are those of exported spans.

While export is off, :data:`tracer` is None: call sites test it before building anything, and no module of
OpenTelemetry is imported (the SDK is imported in :func:`setup` only).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

from squall.core import tracing
from squall.core.settings import OtelSettings, SettingsError
from squall.core.tracing import TraceContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

    Attributes = Mapping[str, AttributeValue]
else:
    Span = Any
    Attributes = Mapping[str, Any]

INSTALL_HINT = "pip install 'squall[otel]'"

tracer: Tracer | None = None
"""The tracer while export is on (set by :func:`setup`), else None."""

Kind = Literal["server", "producer", "consumer"]

# The span whose outcome the code running now may add to (a handler's server span, a poll task's span).
_current_span: ContextVar[Span | None] = ContextVar("squall_otel_span", default=None)


def setup(
    settings: OtelSettings, role: str, instance: str, exporter: SpanExporter | None = None
) -> Callable[[], None]:
    """Start exporting spans if the settings say so; returns what flushes and stops the export (call it once
    the service has stopped). ``exporter`` replaces the OTLP exporter (tests)."""
    if not settings.enabled:
        return _nothing
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise SettingsError(
            "invalid settings:\n  SQUALL_OTEL__ENABLED=true needs the OpenTelemetry packages: "
            f"{INSTALL_HINT} (missing: {exc.name or exc})"
        ) from None
    from squall.core.metrics import VERSION

    resource = Resource.create(
        {
            "service.name": settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or f"squall-{role}",
            "service.namespace": "squall",
            "service.instance.id": instance,
            "service.version": VERSION,
        }
    )
    # A caller's sampled flag decides for its trace; the ratio applies to traces that start here.
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
    )
    # Spans leave in batches from a background thread: the event loop never waits for the collector, and a
    # collector that is down costs dropped spans (the SDK logs it), not requests.
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.endpoint)))
    # Our own provider, not the global one: nothing else in the process starts exporting through it, and
    # tests can set up and shut down several times in one process.
    global tracer
    tracer = provider.get_tracer("squall", VERSION)

    def shutdown() -> None:
        global tracer
        tracer = None
        provider.shutdown()  # flushes what is queued

    return shutdown


def _nothing() -> None:
    return None


# --- spans (call only while ``tracer`` is not None) -------------------------------------------------------


def start(
    name: str,
    kind: Kind,
    parent: TraceContext | None,
    attributes: Attributes,
    *,
    remote_parent: bool = False,
) -> tuple[Span, TraceContext]:
    """A span, child of ``parent`` (a new trace without one), and its ids as a :class:`TraceContext`."""
    from opentelemetry import trace as api

    assert tracer is not None, "otel.start needs setup() with export enabled"
    context = None
    if parent is not None:
        parent_context = api.SpanContext(
            int(parent.trace_id, 16),
            int(parent.span_id, 16),
            is_remote=remote_parent,
            trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED if parent.sampled else api.TraceFlags.DEFAULT),
        )
        context = api.set_span_in_context(api.NonRecordingSpan(parent_context))
    span = tracer.start_span(name, context, kind=_kind(kind), attributes=attributes)
    return span, context_of(span)


def context_of(span: Span) -> TraceContext:
    ids = span.get_span_context()
    return TraceContext(format(ids.trace_id, "032x"), format(ids.span_id, "016x"), ids.trace_flags.sampled)


def end(span: Span, error: BaseException | str | None = None, attributes: Attributes | None = None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)))
        if isinstance(error, BaseException):
            span.record_exception(error)
    span.end()


def _kind(kind: Kind) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "producer": SpanKind.PRODUCER, "consumer": SpanKind.CONSUMER}[kind]


# --- the gateway ------------------------------------------------------------------------------------------


def begin_server(method: str, route: str, header: str | None) -> Span:
    """The span of an intake request, child of the client's ``traceparent`` when valid; it becomes the
    current trace (log lines, the NATS headers of what is published)."""
    span, trace = start(
        f"{method} {route}",
        "server",
        tracing.parse(header),
        {"http.request.method": method, "http.route": route},
        remote_parent=True,
    )
    tracing.begin(trace)
    _current_span.set(span)
    return span


def end_server(span: Span, status: int) -> None:
    # An HTTP server span is an error only on 5xx: a 4xx is the client's mistake, answered correctly.
    end(span, f"HTTP {status}" if status >= 500 else None, {"http.response.status_code": status})


def start_producer(subject: str, msg_id: str, attributes: Attributes) -> tuple[Span, TraceContext]:
    """The span of publishing one message, child of the current trace; send its context in the headers."""
    return start(
        f"publish {subject}",
        "producer",
        tracing.current(),
        {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
            "messaging.message.id": msg_id,
            **attributes,
        },
    )


# --- the processor ----------------------------------------------------------------------------------------


def start_consumer(
    subject: str, headers: Mapping[str, str] | None, attributes: Attributes
) -> tuple[Span, TraceContext]:
    """The span of handling one message, child of the context its publisher sent (a new trace without)."""
    return start(
        f"process {subject}",
        "consumer",
        tracing.parse((headers or {}).get(tracing.HEADER)),
        {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            **attributes,
        },
        remote_parent=True,
    )


@contextlib.contextmanager
def consuming(
    subject: str, headers: Mapping[str, str] | None, attributes: Attributes
) -> Iterator[TraceContext]:
    """Within the block, the trace of handling a message: a consumer span when export is on (ended with an
    error status if the block raises), else the continued W3C context alone."""
    if tracer is None:
        yield tracing.trace_of(dict(headers) if headers is not None else None)
        return
    span, trace = start_consumer(subject, headers, attributes)
    token = _current_span.set(span)
    try:
        yield trace
    except BaseException as exc:
        end(span, exc)
        raise
    else:
        end(span)
    finally:
        _current_span.reset(token)


def end_all(spans: Sequence[Span], error: BaseException | None = None) -> None:
    for span in spans:
        end(span, error)


def annotate(attributes: Attributes, error: str | None = None) -> None:
    """Add the outcome to the current span (a handler's server span, a poll task's span), if any."""
    span = _current_span.get()
    if span is None:
        return
    span.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
