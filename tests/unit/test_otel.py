"""OpenTelemetry export: its settings, the start-up error without the extra, span ids equal to the ids the
logs carry, sampling, and nothing of OpenTelemetry loaded while export is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from squall.core import otel, tracing
from squall.core.settings import OtelSettings, SettingsError, load_settings
from tests.unit.conftest import REPO_ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Export:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.stop = otel._nothing

    def start(self, settings: OtelSettings, role: str = "gateway") -> None:
        self.exporter = InMemorySpanExporter()  # one that has been shut down drops what it is given
        self.stop = otel.setup(settings, role, f"{role}-0", exporter=self.exporter)

    def spans(self) -> tuple[ReadableSpan, ...]:
        """Everything exported (stops the export: it flushes)."""
        self.stop()
        return self.exporter.get_finished_spans()


@pytest.fixture
def export() -> Iterator[Export]:
    export = Export()
    # begin_server sets the current trace for the rest of the task: here, the rest of the test only.
    trace_token = tracing._current.set(None)
    span_token = otel._current_span.set(None)
    yield export
    export.stop()
    assert otel.tracer is None
    otel._current_span.reset(span_token)
    tracing._current.reset(trace_token)


def test_export_is_off_by_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().otel == OtelSettings(
        enabled=False, endpoint=None, service_name=None, sample_ratio=1
    )
    monkeypatch.setenv("SQUALL_OTEL__ENABLED", "true")
    monkeypatch.setenv("SQUALL_OTEL__ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("SQUALL_OTEL__SERVICE_NAME", "squall-eu")
    monkeypatch.setenv("SQUALL_OTEL__SAMPLE_RATIO", "0.25")
    assert load_settings().otel == OtelSettings(
        enabled=True, endpoint="http://collector:4318/v1/traces", service_name="squall-eu", sample_ratio=0.25
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SQUALL_OTEL__SAMPLE_RATIO", "1.5"), ("SQUALL_OTEL__ENDPOINT", "collector:4317")],
)
def test_bad_export_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_export_without_the_extra_stops_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module set to None in sys.modules cannot be imported: as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(SettingsError, match=r"SQUALL_OTEL__ENABLED=true .* pip install 'squall\[otel\]'"):
        otel.setup(OtelSettings(enabled=True), "gateway", "gateway-0")
    assert otel.tracer is None


def test_a_service_started_without_the_extra_exits_with_the_install_command() -> None:
    script = (
        "import sys; sys.modules['opentelemetry.sdk.trace'] = None\n"
        "from squall.cli.main import main; sys.exit(main(['processor']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env.update(
        SQUALL_OTEL__ENABLED="true",
        SQUALL_NATS_URL="nats://127.0.0.1:1",  # never reached: the check comes first
        SQUALL_NATS__CONNECT_RETRY_SECONDS="0",
        PYTHONPATH=str(REPO_ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert done.returncode == 1
    assert "pip install 'squall[otel]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_export_off_the_services_load_no_opentelemetry_module() -> None:
    script = (
        "import json, sys\n"
        "import squall.cli.main, squall.core.lifecycle, squall.gateway.app, squall.processor.worker\n"
        "import squall.scheduler.service\n"
        "from squall.core import otel, tracing\n"
        "from squall.core.settings import load_settings\n"
        "otel.setup(load_settings().otel, 'processor', 'p')()\n"
        "with otel.consuming('squall.tasks.sum', {'traceparent': sys.argv[1]}, {}) as trace:\n"
        "    assert trace.traceparent.startswith(sys.argv[1][:36])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    done = subprocess.run(
        [sys.executable, "-c", script, f"00-{TRACE}-{PARENT}-01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_a_server_span_continues_the_clients_trace_with_the_ids_the_logs_carry(export: Export) -> None:
    export.start(OtelSettings(enabled=True))
    span = otel.begin_server("POST", "/v1/requests", f"00-{TRACE}-{PARENT}-01")
    current = tracing.current()
    assert current is not None and current.trace_id == TRACE
    otel.annotate({"squall.rid": "r1"})
    _, sent = otel.start_producer("squall.requests.submitted", "req-r1", {"squall.rid": "r1"})
    otel.end(_)
    otel.end_server(span, 202)
    server, producer = sorted(export.spans(), key=lambda s: s.kind != SpanKind.SERVER)
    assert server.kind == SpanKind.SERVER and producer.kind == SpanKind.PRODUCER
    assert format(server.context.trace_id, "032x") == TRACE
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT
    assert server.parent.is_remote
    assert format(server.context.span_id, "016x") == current.span_id  # what the log lines carry
    assert producer.parent is not None and producer.parent.span_id == server.context.span_id
    assert sent.traceparent == f"00-{TRACE}-{format(producer.context.span_id, '016x')}-01"
    assert server.attributes is not None and server.attributes["squall.rid"] == "r1"
    assert server.attributes["http.response.status_code"] == 202
    assert producer.attributes is not None and producer.attributes["messaging.system"] == "nats"
    assert server.resource.attributes["service.name"] == "squall-gateway"
    assert server.resource.attributes["service.instance.id"] == "gateway-0"


def test_a_server_span_is_an_error_only_on_5xx(export: Export) -> None:
    export.start(OtelSettings(enabled=True))
    otel.end_server(otel.begin_server("POST", "/v1/requests", None), 422)
    otel.end_server(otel.begin_server("POST", "/v1/requests", None), 503)
    refused, failed = sorted(export.spans(), key=lambda s: s.attributes["http.response.status_code"])  # type: ignore[index]
    assert refused.parent is None  # no traceparent: a new trace
    assert refused.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR


def test_a_consumer_span_fails_with_its_block_and_is_the_child_of_the_message(export: Export) -> None:
    export.start(OtelSettings(enabled=True), role="processor")
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    with (
        pytest.raises(RuntimeError),
        otel.consuming("squall.tasks.sum", headers, {"squall.task_id": "t"}) as trace,
    ):
        assert trace.trace_id == TRACE
        raise RuntimeError("database gone")
    (span,) = export.spans()
    assert span.kind == SpanKind.CONSUMER
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
    assert format(span.context.span_id, "016x") == trace.span_id
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["messaging.destination.name"] == "squall.tasks.sum"
    assert span.resource.attributes["service.name"] == "squall-processor"


def test_the_ratio_samples_new_traces_and_the_callers_flag_decides_for_its_own(export: Export) -> None:
    export.start(OtelSettings(enabled=True, sample_ratio=0.0))
    new = otel.begin_server("POST", "/v1/requests", None)
    unsampled_trace = tracing.current()
    otel.end_server(new, 202)
    sampled = otel.begin_server("POST", "/v1/requests", f"00-{TRACE}-{PARENT}-01")
    otel.end_server(sampled, 202)
    declined = otel.begin_server("POST", "/v1/requests", f"00-{'1' * 32}-{PARENT}-00")
    declined_trace = tracing.current()
    otel.end_server(declined, 202)
    (exported,) = export.spans()
    assert format(exported.context.trace_id, "032x") == TRACE
    # Not exported, but still followed: the ids and the flag travel on in the traceparent.
    assert unsampled_trace is not None and not unsampled_trace.sampled
    assert declined_trace is not None and declined_trace.trace_id == "1" * 32
    assert declined_trace.traceparent.endswith("-00")


def test_the_service_name_comes_from_the_settings_then_otel_service_name_then_the_role(
    export: Export, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    export.start(OtelSettings(enabled=True), role="processor")
    otel.end(otel.start("x", "consumer", None, {})[0])
    (span,) = export.spans()
    assert span.resource.attributes["service.name"] == "from-env"
    export.start(OtelSettings(enabled=True, service_name="from-settings"), role="processor")
    otel.end(otel.start("x", "consumer", None, {})[0])
    (span,) = export.spans()
    assert span.resource.attributes["service.name"] == "from-settings"
