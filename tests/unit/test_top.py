"""``squall top``'s screen from two snapshots: rates are differences over the time between them."""

from __future__ import annotations

import re

from squall.cli.top import Snapshot, render


def _stats(accepted: int, processed: int, done: int) -> dict[str, object]:
    return {
        "requests": {
            "accepted": accepted,
            "processed": processed,
            "pending": accepted - processed,
            "recorded": accepted,
        },
        "items": {"sum": {"pending": accepted - processed, "done": done, "failed": 0}},
        "dead_tasks": {},
    }


def test_rates_are_deltas_per_second() -> None:
    before = Snapshot(at=10.0, answers={"stats": _stats(100, 40, 40)})
    after = Snapshot(
        at=12.0,
        answers={
            "stats": _stats(350, 140, 140),
            "processings": {"processings": [{"name": "sum", "mode": "batch", "paused": True, "pending": 7}]},
            "dependencies": {"dependencies": []},
            "schedulers": {"leader": None, "instances": []},
            "dead": {"tasks": []},
        },
    )
    screen = "\n".join(render(after, before, "http://gw", 2.0))
    assert re.search(r"intake +125\.0/s", screen)
    assert re.search(r"completion +50\.0/s", screen)
    (row,) = [line for line in screen.splitlines() if line.startswith("sum ")]
    assert row.split() == ["sum", "batch", "210", "7", "140", "0", "0", "50.0/s", "paused"]
    assert "leader NONE" in screen and "(none configured)" in screen and "(none)" in screen


def test_first_screen_has_no_rates_and_failed_sections_say_why() -> None:
    only = Snapshot(
        at=1.0, answers={"stats": _stats(5, 5, 5)}, errors={"dependencies": "HTTP 403: forbidden"}
    )
    screen = "\n".join(render(only, None, "http://gw", 1.0))
    assert re.search(r"intake +-\n", screen)
    assert "HTTP 403: forbidden" in screen


def test_the_database_line_shows_the_size_and_the_oldest_finished_request() -> None:
    retention = {
        "finished_seconds": 7 * 86_400,
        "oldest_finished_seconds": {"requests": 3 * 3600, "tasks": None},
        "table_bytes": {"requests": 3 * 2**20, "items": 2**19},
    }
    screen = render(Snapshot(at=1.0, answers={"retention": retention}), None, "http://gw", 1.0)
    (line,) = [line for line in screen if line.startswith("database")]
    assert line.split(maxsplit=1)[1] == "3.5 MiB of work, oldest finished request 3.0 h (kept 7.0 d)"
    forever = {**retention, "finished_seconds": 0, "oldest_finished_seconds": {"requests": None}}
    screen = render(Snapshot(at=1.0, answers={"retention": forever}), None, "http://gw", 1.0)
    assert any(line.endswith("no finished request kept (kept forever)") for line in screen)
