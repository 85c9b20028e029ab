"""``squall top --once`` against a running system: every section, with the system's own numbers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from squall.cli.embedded import free_port
from tests.integration import effect_processings
from tests.integration.harness import ROOT, System, make_settings, wait_for

MODULE = "tests.integration.effect_processings"


async def squall_top(*args: str) -> tuple[int, str]:
    """The real command, in a child process (the system under test answers in this event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "squall.cli",
        "top",
        "--once",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_top_once_shows_every_section(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.REFUSE_ONCE_CALLS.clear()
    system = await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))
    await system.submit({"rid": "bad", "items": [{"number": n, "job": "refuse_once"} for n in (1, 2)]})
    await wait_for(lambda: system.fetchval("SELECT count(*) FROM all_items"), what="recorded")
    dead_id = await system.publish_poll("refuse_once", batch_size=10)
    await wait_for(
        lambda: system.fetchval("SELECT state = 'dead' FROM tasks WHERE id = $1", dead_id), what="dead task"
    )
    for rid in range(3):
        await system.submit({"rid": rid, "items": [{"number": rid, "job": "sum"}] * 2})
    put = await system.client.put(
        "/v1/dependencies/sharedfs", json={"kind": "tcp", "target": f"127.0.0.1:{free_port()}"}
    )
    assert put.status_code == 201, put.text  # created: a new name
    checked = await system.client.post("/v1/dependencies/sharedfs/check")
    assert checked.status_code == 200, checked.text
    await system.start_scheduler("scheduler-top")
    for rid in range(3):
        await system.wait_processed(rid)

    async def led() -> bool:
        return (await system.client.get("/v1/schedulers")).json()["leader"] == "scheduler-top"

    await wait_for(led, what="scheduler-top leading")

    async def counted() -> bool:
        """/v1/stats, which top shows, is cached by the gateway for up to a second."""
        requests = (await system.client.get("/v1/stats")).json()["requests"]
        return bool(requests["accepted"] == requests["processed"] == 4)

    await wait_for(counted, what="/v1/stats counting the four requests")

    code, screen = await squall_top("--url", system.base_url, "--interval", "0.3")
    assert code == 0, screen
    lines = screen.splitlines()
    assert lines[0].startswith(f"squall top  {system.base_url}")
    (accepted,) = [line for line in lines if line.startswith("requests     accepted")]
    assert accepted.split()[2] == "4", accepted
    (processed,) = [line for line in lines if "completion" in line]
    assert processed.split()[:2] == ["processed", "4"], processed
    assert "intake" in screen and "/s" in screen
    (sum_row,) = [line for line in lines if line.startswith("sum ")]
    assert sum_row.split()[:7] == ["sum", "batch", "0", "0", "6", "0", "0"], sum_row
    (refuse_row,) = [line for line in lines if line.startswith("refuse_once ")]
    assert refuse_row.split()[:7] == ["refuse_once", "batch", "0", "0", "0", "2", "1"], refuse_row
    (dep_row,) = [line for line in lines if line.strip().startswith("sharedfs")]
    assert dep_row.split()[:3] == ["sharedfs", "tcp", "DOWN"], dep_row
    assert "scheduler    leader scheduler-top  (1 instance)" in screen
    dead_section = screen[screen.index("dead letters") :]
    assert str(dead_id) in dead_section and "input file missing" in dead_section


async def test_top_once_fails_when_the_gateway_is_unreachable() -> None:
    code, screen = await squall_top("--url", f"http://127.0.0.1:{free_port()}", "--interval", "0.1")
    assert code == 1
    assert "requests     unreachable" in screen
    assert "dependencies" in screen and "dead letters" in screen
