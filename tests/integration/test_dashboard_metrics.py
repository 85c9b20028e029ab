"""Every metric the Grafana dashboards and the Prometheus rules query is one that Squall exports: the
gateway, a processor and a scheduler run as `squall <role>` processes against real NATS JetStream and
PostgreSQL, and the families named by the `# TYPE` lines of their /metrics are compared with the names
the queries select (recorded `squall:*` series must be defined by the rule file instead)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from squall.cli.embedded import free_port
from tests.integration.harness import ROOT, wait_for
from tests.observability.observability import (
    DASHBOARDS,
    dashboard_queries,
    load_dashboard,
    load_rules,
    metric_names,
    recording_rules,
)

# A histogram family is queried through these series (prometheus-client's *_created is turned off).
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
_ROLES = {"gateway": "SQUALL_GATEWAY", "processor": "SQUALL_PROCESSOR", "scheduler": "SQUALL_SCHEDULER"}


def exported_series(exposition: str) -> set[str]:
    """Series names an exposition's `# TYPE` lines promise (families expanded to what PromQL selects)."""
    names: set[str] = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        family, kind = match.groups()
        if kind == "histogram":
            names.update(family + suffix for suffix in _HISTOGRAM_SERIES)
        elif kind == "summary":
            names.update((family, family + "_sum", family + "_count"))
        else:
            names.add(family)  # counters are typed with their _total name in this format
    return names


@pytest.fixture
def running_services(nats_url: str, database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`squall gateway`, `squall processor` and `squall scheduler` as processes; their base URLs."""
    urls: dict[str, str] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for role, prefix in _ROLES.items():
            port = free_port()
            port_setting = "PORT" if role == "gateway" else "HTTP_PORT"
            host_setting = "HOST" if role == "gateway" else "HTTP_HOST"
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SQUALL_NATS_URL": nats_url,
                "SQUALL_DATABASE_URL": database_url,
                "SQUALL_AUTH__REQUIRED": "false",
                "SQUALL_LOG_FORMAT": "text",
                "SQUALL_INSTANCE_ID": f"{role}-1",
                f"{prefix}__{port_setting}": str(port),
                f"{prefix}__{host_setting}": "127.0.0.1",
            }
            with open(tmp_path / f"{role}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "squall.cli", role], env=env, stdout=log, stderr=log
                    )
                )
            urls[role] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def scrape(urls: dict[str, str]) -> dict[str, set[str]]:
    """Each service's exported series, once all three answer /metrics."""
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def metrics_of(url: str) -> str | None:
            try:
                response = await client.get(f"{url}/metrics")
            except httpx.TransportError:
                return None
            return response.text if response.status_code == 200 else None

        found: dict[str, set[str]] = {}
        for role, url in urls.items():
            text = await wait_for(lambda url=url: metrics_of(url), timeout=60, what=f"{role} /metrics")
            found[role] = exported_series(text)
        return found


def queried_names() -> dict[str, set[str]]:
    """Where each name is queried: dashboard files and the rule file's rules."""
    where: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        for query in dashboard_queries(load_dashboard(path)):
            for name in metric_names(query):
                where.setdefault(name, set()).add(path.name)
    for rule in load_rules():
        for name in metric_names(rule["expr"]):
            where.setdefault(name, set()).add(rule.get("record") or rule["alert"])
    return where


async def test_every_queried_metric_is_exported_by_a_running_system(running_services: dict[str, str]) -> None:
    exported_by = await scrape(running_services)
    # The system is up for real: a request goes through the gateway and a processor.
    async with httpx.AsyncClient(base_url=running_services["gateway"], timeout=10.0) as client:
        accepted = await client.post("/v1/requests", json={"items": [{"number": 3, "job": "square"}]})
        assert accepted.status_code == 202, accepted.text
        rid = accepted.json()["rid"]

        async def processed() -> bool:
            answer = await client.get(f"/v1/requests/{rid}")
            return answer.status_code == 200 and bool(answer.json()["processed"])

        await wait_for(processed, timeout=30, what="the request processed")

    exported = set().union(*exported_by.values())
    recorded = {rule["record"] for rule in recording_rules()}
    missing = {
        name: sorted(places)
        for name, places in queried_names().items()
        if name not in (recorded if ":" in name else exported)
    }
    assert not missing, f"queried but neither exported nor recorded: {missing}"


async def test_each_service_exports_its_own_families(running_services: dict[str, str]) -> None:
    """The families the dashboards lean on come from the service that owns them."""
    exported_by = await scrape(running_services)
    expectations = {
        "gateway": {
            "squall_http_requests_total",
            "squall_events_published_total",
            "squall_requests",
            "squall_items",
            "squall_dead_tasks",
            "squall_db_pool_connections",
        },
        "processor": {
            "squall_tasks_total",
            "squall_items_processed_total",
            "squall_request_end_to_end_seconds_bucket",
            "squall_queue_pending_messages",
            "squall_queue_ack_pending_messages",
            "squall_db_pool_connections",
        },
        "scheduler": {
            "squall_scheduler_is_leader",
            "squall_processing_pending_items",
            "squall_dependency_up",
            "squall_db_pool_connections",
        },
    }
    for role, families in expectations.items():
        assert families <= exported_by[role], f"{role} lacks {sorted(families - exported_by[role])}"
        assert "squall_build_info" in exported_by[role]


def test_exported_series_expands_families() -> None:
    exposition = (
        "# HELP squall_x_total X.\n# TYPE squall_x_total counter\nsquall_x_total 1.0\n"
        "# HELP squall_y_seconds Y.\n# TYPE squall_y_seconds histogram\n"
        "# HELP squall_z Z.\n# TYPE squall_z gauge\n"
    )
    assert exported_series(exposition) == {
        "squall_x_total",
        "squall_y_seconds_bucket",
        "squall_y_seconds_sum",
        "squall_y_seconds_count",
        "squall_z",
    }
