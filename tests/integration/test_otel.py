"""OpenTelemetry export: a real gateway and processor export spans over OTLP/HTTP to a receiver on 127.0.0.1
that decodes them with the OTLP protobuf definitions. One client trace covers client → gateway → NATS →
processor; log lines carry the ids of the exported spans; with export off nothing of OpenTelemetry loads."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from squall.cli.embedded import free_port
from squall.core import events, otel
from squall.core.settings import OtelSettings, Settings
from squall.gateway import validation
from squall.gateway.handlers import SUBMIT_ROUTE, begin_intake_trace
from tests.integration import effect_processings
from tests.integration.harness import ROOT, LogRecords, ServiceProcesses, System, make_settings, wait_for

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
# A trace its client does not sample (flags 00).
UNSAMPLED_TRACE = "0af7651916cd43dd8448eb211c80319c"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: int
    service: str


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


class OtlpReceiver:
    """The traces endpoint of an OTLP/HTTP collector (protobuf bodies), keeping every span it receives."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.content_types: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.content_types.add(self.headers["Content-Type"])
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append(
                                ReceivedSpan(
                                    span.name,
                                    span.kind,
                                    span.trace_id.hex(),
                                    span.span_id.hex(),
                                    span.parent_span_id.hex(),
                                    {a.key: _value(a.value) for a in span.attributes},
                                    span.status.code,
                                    resource["service.name"],
                                )
                            )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def one(self, **fields: Any) -> ReceivedSpan:
        attributes = fields.pop("attributes", {})
        found = [
            s
            for s in self.spans
            if all(getattr(s, k) == v for k, v in fields.items())
            and all(s.attributes.get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (fields, attributes, self.spans)
        return found[0]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def exporting(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Export on, as ``squall gateway`` / ``squall processor`` start it (both roles share this process)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: spans leave quickly
    stop = otel.setup(
        OtelSettings(enabled=True, endpoint=receiver.url, service_name="squall-test"), "gateway", "test-0"
    )
    yield
    stop()
    assert otel.tracer is None


SERVER, PRODUCER, CONSUMER = (
    SpanProto.SPAN_KIND_SERVER,
    SpanProto.SPAN_KIND_PRODUCER,
    SpanProto.SPAN_KIND_CONSUMER,
)


async def test_one_trace_covers_client_gateway_nats_and_processor(
    exporting: None,
    receiver: OtlpReceiver,
    records: LogRecords,
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
) -> None:
    immediate = {"sum": {"mode": "immediate"}}
    system = await system_factory(make_settings(nats_url, database_url, processings=immediate))
    task_id = await _submit_traced_legacy_and_unsampled(system)
    for rid in ("traced", 7, "unsampled"):
        await system.wait_processed(rid)

    async def all_spans() -> bool:
        # Two traces of three spans (the processor may end its span before the gateway ends its own).
        return all(sum(s.kind == kind for s in receiver.spans) >= 2 for kind in (SERVER, PRODUCER, CONSUMER))

    await wait_for(all_spans, what="the spans at the receiver")

    # client → gateway (server span) → publish (producer span) → processor (consumer span): one trace.
    server, consumer = _check_client_trace(receiver, task_id)
    assert all(s.status != Status.STATUS_CODE_ERROR for s in receiver.spans)

    # The log lines carry the ids of the exported spans.
    (accepted,) = records.find("request accepted", rid="traced")
    assert (accepted.__dict__["trace_id"], accepted.__dict__["span_id"]) == (CLIENT_TRACE, server.span_id)
    (recorded,) = records.find("request recorded and processed", rid="traced")
    assert (recorded.__dict__["trace_id"], recorded.__dict__["span_id"]) == (CLIENT_TRACE, consumer.span_id)

    # The legacy route: a new trace whose root is the gateway's server span.
    _check_legacy_route_trace(receiver)

    assert receiver.of_trace(UNSAMPLED_TRACE) == []
    (unsampled,) = records.find("request recorded and processed", rid="unsampled")
    assert unsampled.__dict__["trace_id"] == UNSAMPLED_TRACE  # still followed in the logs
    assert receiver.content_types == {"application/x-protobuf"}


async def _submit_traced_legacy_and_unsampled(system: System) -> str:
    """Submit a request in the client's trace, one on the legacy route and one in an unsampled trace;
    the first one's task id."""
    response = await system.client.post(
        "/v1/requests",
        json={"rid": "traced", "items": [{"number": 2, "job": "sum"}]},
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    assert response.status_code == 202
    task_id: str = response.json()["task_id"]
    # The original contract's route, without a traceparent: a trace of its own.
    legacy = await system.client.post("/number_request", json={"rid": 7, "numbers": [5], "jobtodo": ["sum"]})
    assert legacy.status_code == 201, legacy.text
    # A client that does not sample its trace: nothing of it is exported, anywhere.
    response = await system.client.post(
        "/v1/requests",
        json={"rid": "unsampled", "items": [{"number": 3, "job": "sum"}]},
        headers={"traceparent": f"00-{UNSAMPLED_TRACE}-b7ad6b7169203331-00"},
    )
    assert response.status_code == 202
    return task_id


def _check_client_trace(receiver: OtlpReceiver, task_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
    """The client's trace holds exactly the gateway's server and producer spans and the processor's
    consumer span, each the child of the one before; the server and consumer spans."""
    server = receiver.one(kind=SERVER, trace_id=CLIENT_TRACE)
    assert server.name == "POST /v1/requests"
    assert server.parent_span_id == CLIENT_SPAN
    assert server.service == "squall-test"
    assert server.attributes["http.route"] == "/v1/requests"
    assert server.attributes["http.response.status_code"] == 202
    assert server.attributes["squall.rid"] == "traced"
    assert server.attributes["squall.task_id"] == task_id
    producer = receiver.one(kind=PRODUCER, trace_id=CLIENT_TRACE)
    assert producer.parent_span_id == server.span_id
    assert producer.name == f"publish {events.REQUEST_SUBMITTED}"
    assert producer.attributes["messaging.system"] == "nats"
    assert producer.attributes["messaging.destination.name"] == events.REQUEST_SUBMITTED
    assert producer.attributes["squall.task_id"] == task_id
    consumer = receiver.one(kind=CONSUMER, trace_id=CLIENT_TRACE)
    assert consumer.parent_span_id == producer.span_id  # across the NATS hop
    assert consumer.name == f"process {events.REQUEST_SUBMITTED}"
    assert consumer.attributes["messaging.system"] == "nats"
    assert consumer.attributes["messaging.destination.name"] == events.REQUEST_SUBMITTED
    assert consumer.attributes["squall.rid"] == "traced"
    assert consumer.attributes["squall.task_id"] == task_id
    assert consumer.attributes["squall.processing"] == ["sum"]
    assert consumer.attributes["squall.recorded"] is True
    assert consumer.attributes["squall.processed"] is True
    assert {s.span_id for s in receiver.of_trace(CLIENT_TRACE)} == {
        server.span_id,
        producer.span_id,
        consumer.span_id,
    }
    return server, consumer


def _check_legacy_route_trace(receiver: OtlpReceiver) -> None:
    legacy_server = receiver.one(kind=SERVER, attributes={"http.route": "/number_request"})
    assert legacy_server.parent_span_id == ""
    assert legacy_server.attributes["squall.rid"] == "7"
    legacy_producer = receiver.one(kind=PRODUCER, trace_id=legacy_server.trace_id)
    assert legacy_producer.parent_span_id == legacy_server.span_id
    legacy_consumer = receiver.one(kind=CONSUMER, trace_id=legacy_server.trace_id)
    assert legacy_consumer.parent_span_id == legacy_producer.span_id


async def test_requests_published_together_keep_a_trace_each(
    exporting: None,
    receiver: OtlpReceiver,
    records: LogRecords,
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
) -> None:
    """Requests whose events share one JetStream message each keep their own trace across the NATS hop:
    the batch carries every request's traceparent, and the processor starts a consumer span per request."""
    immediate = {"sum": {"mode": "immediate"}}
    system = await system_factory(make_settings(nats_url, database_url, processings=immediate))
    gw = system.settings.gateway
    traces = [f"{i + 1:032x}" for i in range(8)]

    async def traced_submission(index: int) -> None:
        span = begin_intake_trace(SUBMIT_ROUTE, f"00-{traces[index]}-{CLIENT_SPAN}-01")
        body = {"rid": f"t-{index}", "items": [{"number": index, "job": "sum"}]}
        sub = validation.parse_submission(body, system.registry, gw.max_items, gw.max_rid_length)
        await system.app.intake.submit(sub)
        assert span is not None
        otel.end_server(span, 202)

    js = system.app.nc.jetstream()
    before = (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq
    await asyncio.gather(*(asyncio.create_task(traced_submission(i)) for i in range(len(traces))))
    assert (await js.stream_info(events.REQUESTS_STREAM)).state.last_seq == before + 1  # one message
    for index in range(len(traces)):
        await system.wait_processed(f"t-{index}")

    async def consumer_spans() -> bool:
        return sum(s.kind == CONSUMER for s in receiver.spans) >= len(traces)

    await wait_for(consumer_spans, what="a consumer span per request")
    for index, trace in enumerate(traces):
        server = receiver.one(kind=SERVER, trace_id=trace)
        producer = receiver.one(kind=PRODUCER, trace_id=trace)
        consumer = receiver.one(kind=CONSUMER, trace_id=trace)
        assert server.parent_span_id == CLIENT_SPAN
        assert producer.parent_span_id == server.span_id
        assert consumer.parent_span_id == producer.span_id  # across the shared message
        assert consumer.attributes["squall.rid"] == f"t-{index}"
        assert consumer.attributes["squall.processed"] is True
        assert consumer.attributes["messaging.batch.message_count"] == 1  # messages, not requests
        (recorded,) = records.find("request recorded and processed", rid=f"t-{index}")
        assert (recorded.__dict__["trace_id"], recorded.__dict__["span_id"]) == (trace, consumer.span_id)


async def test_a_replay_traces_into_the_poll_task(
    exporting: None,
    receiver: OtlpReceiver,
    records: LogRecords,
    nats_url: str,
    database_url: str,
    system_factory: Callable[..., Awaitable[System]],
) -> None:
    effect_processings.REFUSE_ONCE_CALLS.clear()
    settings = make_settings(
        nats_url, database_url, processing_modules=["tests.integration.effect_processings"]
    )
    system = await system_factory(settings)
    await system.submit({"rid": "r", "items": [{"number": 1, "job": "refuse_once"}]})
    await wait_for(lambda: system.fetchval("SELECT count(*) FROM all_items"), what="recorded")
    task_id = await system.publish_poll("refuse_once", batch_size=10)  # as the scheduler: no traceparent
    await wait_for(
        lambda: system.fetchval("SELECT state = 'dead' FROM tasks WHERE id = $1", task_id), what="dead"
    )
    replay = await system.client.post(
        f"/v1/tasks/{task_id}/retry", headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    )
    assert replay.status_code == 202
    await system.wait_processed("r")
    poll_subject = events.poll_subject("refuse_once")

    async def poll_spans() -> bool:
        polls = [s for s in receiver.spans if s.attributes.get("messaging.destination.name") == poll_subject]
        return sum(s.kind == CONSUMER for s in polls) >= 2 and any(
            s.kind == SERVER and s.trace_id == CLIENT_TRACE for s in receiver.spans
        )

    await wait_for(poll_spans, what="both poll tasks' spans at the receiver")

    # The scheduled run that failed: a trace of its own, marked as an error.
    failed = receiver.one(kind=CONSUMER, attributes={"squall.state": "dead"})
    assert failed.parent_span_id == ""
    assert failed.status == Status.STATUS_CODE_ERROR
    assert failed.attributes["squall.task_id"] == str(task_id)
    # The replay: client → POST /v1/tasks/{task_id}/retry → publish → the poll task's run.
    server = receiver.one(kind=SERVER, trace_id=CLIENT_TRACE)
    assert server.name == "POST /v1/tasks/{task_id}/retry"
    assert server.parent_span_id == CLIENT_SPAN
    assert server.attributes["squall.task_id"] == str(task_id)
    producer = receiver.one(kind=PRODUCER, trace_id=CLIENT_TRACE)
    assert producer.parent_span_id == server.span_id
    assert producer.attributes["messaging.destination.name"] == poll_subject
    consumer = receiver.one(kind=CONSUMER, trace_id=CLIENT_TRACE)
    assert consumer.parent_span_id == producer.span_id
    assert consumer.attributes["squall.task_id"] == str(task_id)
    assert consumer.attributes["squall.processing"] == "refuse_once"
    assert consumer.attributes["squall.state"] == "succeeded"
    assert consumer.attributes["squall.items"] == 1
    assert consumer.status != Status.STATUS_CODE_ERROR
    (processed,) = records.find("processed 1 item(s)", trace_id=CLIENT_TRACE)
    assert processed.__dict__["span_id"] == consumer.span_id


# Runs a gateway and a processor with export off (the default), submits a traced request and waits for
# it to be processed; then prints the OpenTelemetry modules loaded.
_DISABLED_RUN = """
import asyncio, contextlib, json, sys
import squall.cli.main, squall.core.lifecycle, squall.scheduler.service
from squall.core import otel
from tests.integration.harness import make_settings, start_system

async def main(nats_url, database_url):
    settings = make_settings(nats_url, database_url, processings={"sum": {"mode": "immediate"}})
    assert not settings.otel.enabled
    otel.setup(settings.otel, "gateway", "test")()
    async with contextlib.AsyncExitStack() as stack:
        system = await start_system(settings, stack)
        response = await system.client.post(
            "/v1/requests", json={"rid": "quiet", "items": [{"number": 1, "job": "sum"}]},
            headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        )
        assert response.status_code == 202, response.text
        await system.wait_processed("quiet")
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_with_export_off_no_opentelemetry_module_is_loaded(nats_url: str, database_url: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _DISABLED_RUN, nats_url, database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


async def test_squall_gateway_and_processor_processes_export_one_trace(
    receiver: OtlpReceiver, settings: Settings, tmp_path: Path
) -> None:
    """As deployed: `squall gateway` and `squall processor` processes set up the export from SQUALL_OTEL__*
    and flush it when they stop; each exports under its own service name."""
    port = free_port()
    services = ServiceProcesses(
        settings,
        tmp_path,
        SQUALL_OTEL__ENABLED="true",
        SQUALL_OTEL__ENDPOINT=receiver.url,
        SQUALL_AUTH__REQUIRED="false",
        SQUALL_GATEWAY__PORT=str(port),
        SQUALL_GATEWAY__HOST="127.0.0.1",
        SQUALL_GATEWAY__SHUTDOWN_DELAY_SECONDS="0",
        SQUALL_PROCESSINGS__SUM__MODE="immediate",
        OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing leaves before the flush at shutdown
    )
    services.start("gateway", "gateway-0")
    services.start("processor", "processor-0")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=30, what="the gateway ready")
            response = await client.post(
                "/v1/requests",
                json={"rid": "deployed", "items": [{"number": 1, "job": "sum"}]},
                headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            )
            assert response.status_code == 202, response.text

            async def processed() -> bool:
                answer = await client.get("/v1/requests/deployed")
                return answer.status_code == 200 and answer.json()["processed"]

            await wait_for(processed, what="the request processed")
        assert receiver.spans == []  # held by the batch processor until the flush
    finally:
        await asyncio.to_thread(services.stop_all)  # SIGTERM: each process flushes its spans as it exits
    assert [p.returncode for p in services.by_name.values()] == [0, 0]
    server = receiver.one(kind=SERVER, trace_id=CLIENT_TRACE)
    producer = receiver.one(kind=PRODUCER, trace_id=CLIENT_TRACE)
    consumer = receiver.one(kind=CONSUMER, trace_id=CLIENT_TRACE)
    assert (server.service, producer.service, consumer.service) == (
        "squall-gateway",
        "squall-gateway",
        "squall-processor",
    )
    assert server.parent_span_id == CLIENT_SPAN
    assert producer.parent_span_id == server.span_id
    assert consumer.parent_span_id == producer.span_id
    assert consumer.attributes["squall.rid"] == "deployed"
