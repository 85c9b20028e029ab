"""Dependencies gate processing: while one is down its processings' ticks are held; nothing is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import tornado.httpserver
import tornado.web

from squall.cli.embedded import free_port
from tests.integration.harness import System, make_settings, wait_for


class FileSystemProbe:
    """A real HTTP server standing for an external system: 200 while up, connection refused while off."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def on(self) -> None:
        class Health(tornado.web.RequestHandler):
            def get(self) -> None:
                self.write("ok")

        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([("/health", Health)]))
        self.server.listen(self.port, "127.0.0.1")

    async def off(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None


@pytest.fixture
async def probe() -> AsyncIterator[FileSystemProbe]:
    running = FileSystemProbe()
    running.on()
    yield running
    await running.off()


async def _state(system: System, name: str) -> str | None:
    response = await system.client.get(f"/v1/dependencies/{name}")
    return str(response.json()["state"]) if response.status_code == 200 else None


async def test_down_dependency_holds_its_processing_and_recovery_resumes(
    system: System, probe: FileSystemProbe
) -> None:
    put = await system.client.put(
        "/v1/dependencies/sharedfs", json={"kind": "http", "target": probe.url, "interval_seconds": 0.2}
    )
    assert put.status_code == 201, put.text
    patched = await system.client.patch("/v1/processings/sum", json={"dependencies": ["sharedfs"]})
    assert patched.status_code == 200 and patched.json()["dependencies"] == ["sharedfs"]
    interval = 1.0
    await system.start_scheduler()
    await wait_for(lambda: _is(system, "sharedfs", "up"), what="sharedfs up")
    assert (
        await system.client.patch("/v1/schedules/sum", json={"interval_seconds": interval})
    ).status_code == 200

    await probe.off()
    await wait_for(lambda: _is(system, "sharedfs", "down"), what="sharedfs down")
    await system.submit({"rid": "s", "items": [{"number": n, "job": "sum"} for n in range(20)]})
    await system.submit({"rid": "m", "items": [{"number": n, "job": "mul"} for n in range(20)]})
    await system.wait_processed("m")  # mul does not need sharedfs

    async def held() -> bool:
        ticks = (await system.client.get("/v1/schedules/sum")).json()["recent_ticks"]
        return any(t["outcome"] == "held" and "sharedfs" in (t["detail"] or "") for t in ticks)

    await wait_for(held, timeout=5, what="a held tick of sum")
    state = await system.request_state("s")
    assert state["counts"]["pending"] == 20 and state["processed"] is False
    view = (await system.client.get("/v1/processings/sum")).json()
    assert view["pending"] == 20

    probe.on()
    await wait_for(lambda: _is(system, "sharedfs", "up"), what="sharedfs back up")
    # Within two intervals of the recovery every sum item is processed, each once.
    state = await system.wait_processed("s", timeout=2 * interval + 1.0)
    assert [i["result"] for i in state["items"]] == [n + 2 for n in range(20)]
    assert await system.fetchval("SELECT max(attempts) FROM all_items WHERE job = 'sum'") == 1


async def _is(system: System, name: str, state: str) -> bool:
    return await _state(system, name) == state


async def test_pause_and_resume_by_hand(system: System) -> None:
    await system.start_scheduler()
    assert (await system.client.patch("/v1/processings/mul", json={"paused": True})).json()["paused"] is True
    await system.submit({"rid": "p", "items": [{"number": 3, "job": "mul"}]})

    async def held() -> bool:
        ticks = (await system.client.get("/v1/schedules/mul")).json()["recent_ticks"]
        return any(t["outcome"] == "held" and t["detail"] == "paused" for t in ticks)

    await wait_for(held, what="a held tick while paused")
    assert (await system.request_state("p"))["processed"] is False
    assert (await system.client.patch("/v1/processings/mul", json={"paused": False})).json()[
        "paused"
    ] is False
    assert (await system.wait_processed("p"))["items"][0]["result"] == 6


async def test_processor_hands_a_batch_back_without_counting_an_attempt(system: System) -> None:
    await system.client.patch("/v1/processings/sum", json={"paused": True})
    await system.submit({"rid": "h", "items": [{"number": 1, "job": "sum"}]})

    async def recorded() -> bool:
        return bool((await system.request_state("h"))["recorded"])

    await wait_for(recorded, what="recorded")
    task_id = await system.publish_poll("sum", batch_size=10)

    async def finished() -> dict[str, Any] | None:
        task = (await system.client.get(f"/v1/tasks/{task_id}")).json()
        return task if task["state"] == "succeeded" else None

    task = await wait_for(finished, what="the poll task handed back")
    assert task["error"] == "handed back: paused" and task["items_processed"] == 0
    assert await system.fetchval("SELECT attempts FROM all_items") == 0
    assert await system.fetchval("SELECT state FROM all_items") == "pending"


async def test_check_now_and_dependency_crud(system: System, probe: FileSystemProbe) -> None:
    put = await system.client.put(
        "/v1/dependencies/db",
        json={"kind": "tcp", "target": f"127.0.0.1:{probe.port}", "failure_threshold": 2},
    )
    assert put.status_code == 201
    checked = (await system.client.post("/v1/dependencies/db/check")).json()
    assert checked["result"]["ok"] is True and checked["state"] == "up"
    await probe.off()
    first = (await system.client.post("/v1/dependencies/db/check")).json()
    assert first["result"]["ok"] is False and first["state"] == "up"  # one failure of two
    second = (await system.client.post("/v1/dependencies/db/check")).json()
    assert second["state"] == "down" and second["last_error"]
    replaced = await system.client.put("/v1/dependencies/db", json={"kind": "tcp", "target": "127.0.0.1:1"})
    assert replaced.status_code == 200 and replaced.json()["state"] == "unknown"  # a new target starts over
    listed = (await system.client.get("/v1/dependencies")).json()["dependencies"]
    assert [d["name"] for d in listed] == ["db"]
    assert (await system.client.delete("/v1/dependencies/db")).status_code == 204
    assert (await system.client.get("/v1/dependencies/db")).status_code == 404
    assert (await system.client.post("/v1/dependencies/db/check")).status_code == 404


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"kind": "command", "target": "rm -rf /"}, "invalid_value", "kind"),
        ({"kind": "http", "target": "ftp://x"}, "invalid_value", "target"),
        ({"kind": "tcp", "target": "no-port"}, "invalid_value", "target"),
        ({"kind": "http", "target": "http://x", "interval_seconds": -1}, "invalid_value", "interval_seconds"),
        ({"kind": "http"}, "missing_field", "target"),
        ({"kind": "http", "target": "http://x", "colour": 1}, "unknown_field", "colour"),
    ],
)
async def test_invalid_dependencies(system: System, body: dict[str, Any], code: str, field: str) -> None:
    response = await system.client.put("/v1/dependencies/bad", json=body)
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (code, field)


async def test_unknown_dependency_in_a_processing_is_422(system: System) -> None:
    response = await system.client.patch("/v1/processings/sum", json={"dependencies": ["ghost"]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "dependencies.0"
    assert (await system.client.patch("/v1/processings/ghost", json={"paused": True})).status_code == 404


async def test_configured_dependencies_may_be_commands_and_are_read_only(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    settings = make_settings(
        nats_url,
        database_url,
        dependencies={"mount": {"kind": "command", "target": "test -d /", "interval_seconds": 0.2}},
    )
    system = await system_factory(settings)
    await system.start_scheduler()
    await wait_for(lambda: _is(system, "mount", "up"), what="the configured command dependency up")
    listed = (await system.client.get("/v1/dependencies/mount")).json()
    assert listed["origin"] == "config" and listed["kind"] == "command"
    refused = await system.client.put("/v1/dependencies/mount", json={"kind": "tcp", "target": "127.0.0.1:1"})
    assert refused.status_code == 409
    assert (await system.client.delete("/v1/dependencies/mount")).status_code == 409
