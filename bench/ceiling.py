"""The machine's HTTP ceiling: a bare Tornado handler answering the benchmark's k6 load.

    python -m bench.ceiling [--vus 32] [--duration 20s] [--items 1]

One process (uvloop's loop, as the gateway runs) serves ``POST /v1/requests`` with a ``RequestHandler``
that answers a fixed 202 body and does nothing else; k6 drives it with ``bench/k6/submit.js``, the script
``python -m bench`` uses. It prints JSON: requests/s, HTTP p50/p99, and the CPU per request of the server
and of k6. That is what one request costs before Squall does anything, and what k6 needs per request on
this machine at this minute: the yardstick by which the benchmark's figures of different machines or
minutes compare (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.k6run import parse_duration, run_k6

# Runs in its own process: the server whose CPU is measured.
SERVER = """
import asyncio, sys
import tornado.web, uvloop

class Accept(tornado.web.RequestHandler):
    def post(self):
        self.set_status(202)
        self.set_header("Content-Type", "application/json")
        self.write(b'{"task_id":"00000000-0000-0000-0000-000000000000","status":"queued"}')

async def main():
    tornado.web.Application([(r"/v1/requests", Accept)]).listen(int(sys.argv[1]), "127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""


def _children_cpu() -> float:
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return reaped.ru_utime + reaped.ru_stime


async def measure(vus: int, duration: str, items: int) -> dict[str, Any]:
    k6_duration, seconds = parse_duration(duration)
    port = procs.free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(port), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        if (await asyncio.wait_for(server.stdout.readline(), 30)).strip() != b"ready":
            raise RuntimeError("the bare Tornado server did not start")
        with tempfile.TemporaryDirectory(prefix="squall-ceiling-") as scratch:
            server_before = procs.cpu_seconds(server.pid) or 0.0
            k6_before, started = _children_cpu(), time.monotonic()
            summary = await run_k6(
                base_url=f"http://127.0.0.1:{port}",
                items_per_request=items,
                vus=vus,
                duration=k6_duration,
                duration_seconds=seconds,
                run_id=f"ceiling-{int(time.time())}",
                summary_path=Path(scratch) / "summary.json",
                log_path=Path(scratch) / "k6.log",
            )
            window = time.monotonic() - started
            # The server is not reaped yet: the children's figure is k6's alone.
            server_cpu = (procs.cpu_seconds(server.pid) or 0.0) - server_before
            k6_cpu = _children_cpu() - k6_before
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        await server.wait()
    requests = summary["accepted_202"]
    return {
        "vus": vus,
        "duration": k6_duration,
        "items_per_request": items,
        "requests_per_second": summary["accepted_per_second"],
        "http_p50_ms": summary["http_p50_ms"],
        "http_p99_ms": summary["http_p99_ms"],
        "not_accepted": summary["not_accepted"],
        "cores_busy": round((server_cpu + k6_cpu) / window, 2),
        "us_per_request": {
            "server": round(server_cpu * 1e6 / requests) if requests else None,
            "k6": round(k6_cpu * 1e6 / requests) if requests else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--vus", type=int, default=32)
    parser.add_argument("--duration", default="20s")
    parser.add_argument("--items", type=int, default=1, help="items per request in k6's body (default 1)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.vus, args.duration, args.items)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
