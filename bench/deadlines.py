"""CPU per request of the gateway's slow-client deadlines: Tornado's own (``gen.with_timeout`` around every
header and body read) against the gateway's (``squall.gateway.server.CappedHTTPServer``: a deadline per
connection, moved on twice per request, and a sweep twice a second).

    python -m bench.deadlines [--number 100000] [--repeat 5]

Each figure is the best of ``--repeat`` rounds of ``--number`` awaits of a future resolved on the next
loop iteration, on uvloop: plainly, inside ``gen.with_timeout``, and with the two deadline updates a
request costs here (the second one through the delegate wrapper, as in the server). Tornado's timer is
paid per read, twice for a request with a body; the gateway's updates once per request."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import uvloop
from tornado import gen, httputil, ioloop, iostream

from squall.gateway.server import _BodyDeadline


class _Delegate(httputil.HTTPMessageDelegate):
    def headers_received(self, start_line: object, headers: object) -> None:  # type: ignore[override]
        return None


async def measure(number: int, repeat: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    io = ioloop.IOLoop.current()
    stream = object()
    deadlines: dict[object, float] = {}

    def resolved_soon() -> asyncio.Future[int]:
        future = loop.create_future()
        loop.call_soon(future.set_result, 1)
        return future

    async def plain() -> None:
        await resolved_soon()

    async def tornado_timer() -> None:
        await gen.with_timeout(io.time() + 10, resolved_soon(), quiet_exceptions=iostream.StreamClosedError)

    async def gateway_deadlines() -> None:
        deadlines[stream] = time.monotonic() + 10  # CappedHTTPServer.start_request
        wrapper = _BodyDeadline(_Delegate(), deadlines, stream, 30)  # type: ignore[arg-type]
        wrapper.headers_received(None, None)  # type: ignore[arg-type]
        await resolved_soon()

    ways: dict[str, Callable[[], Awaitable[None]]] = {
        "plain await": plain,
        "in gen.with_timeout": tornado_timer,
        "with the gateway's deadlines": gateway_deadlines,
    }
    best = {name: float("inf") for name in ways}
    for _ in range(repeat):
        for name, way in ways.items():
            started = time.process_time()
            for _ in range(number):
                await way()
            best[name] = min(best[name], (time.process_time() - started) / number * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=100_000, help="awaits per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    args = parser.parse_args()
    best = uvloop.run(measure(args.number, args.repeat))
    base = best["plain await"]
    for name, micros in best.items():
        print(f"{name:>30}: {micros:6.2f} us ({micros - base:+.2f} us)")


if __name__ == "__main__":
    main()
