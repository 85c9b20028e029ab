"""Client CPU of reading a submission's body in the gateway, step by step, for a P1 (1 item) and a P2
(100 items) body: decoding the JSON, checking its depth, checking its fields.

    python -m bench.validation [--number 20000] [--repeat 7]

Each figure is the best of ``--repeat`` rounds of ``--number`` calls, in microseconds per call. The depth
check is made only when a submission's fields are refused (``squall.gateway.base.read_submission``)."""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from squall.gateway import validation


def body(items: int) -> bytes:
    return orjson.dumps({"rid": "bench-1", "items": [{"number": n + 1, "job": "sum"} for n in range(items)]})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (the best is kept)")
    args = parser.parse_args()
    jobs = {"sum", "mul"}
    for profile, items in (("P1", 1), ("P2", 100)):
        raw = body(items)
        doc = orjson.loads(raw)
        steps: dict[str, Callable[[], Any]] = {
            "decode": lambda raw=raw: validation.load_json(raw),
            "depth": lambda doc=doc: validation.check_depth(doc),
            "fields": lambda doc=doc: validation.parse_submission(doc, jobs, 1000, 256),
        }
        micros = {
            name: min(timeit.repeat(step, number=args.number, repeat=args.repeat)) / args.number * 1e6
            for name, step in steps.items()
        }
        total = sum(micros.values())
        print(
            f"{profile} ({items} item(s), {len(raw)} bytes): "
            + ", ".join(f"{name} {us:.2f} us" for name, us in micros.items())
            + f"; the depth check is {100 * micros['depth'] / total:.0f} % of the three"
        )


if __name__ == "__main__":
    main()
