"""bench.soak's verdicts: flat size and memory after the settling time, and no request lost."""

from __future__ import annotations

from typing import Any

from bench.soak import verdicts

K6 = [{"accepted_202": 900}, {"accepted_202": 100}]


def _samples(tables: list[int], gateway_mb: list[float], accepted: int = 1000) -> list[dict[str, Any]]:
    samples = [
        {
            "t": 10.0 * n,
            "phase": "load",
            "tables_bytes": size,
            "database_bytes": size + 1000,
            "rss_mb": {"gateway": rss},
            "accepted": accepted,
            "processed": accepted,
        }
        for n, (size, rss) in enumerate(zip(tables, gateway_mb, strict=True))
    ]
    return [*samples, {**samples[-1], "t": samples[-1]["t"] + 10, "phase": "drained", "tables_bytes": 1}]


def test_a_flat_size_and_memory_with_nothing_lost_pass() -> None:
    result = verdicts(
        _samples([10, 500, 1000, 1050, 980, 1020, 1000], [70.0] * 7), K6, settle=20, tolerance=0.1
    )
    assert result["tables_bytes"]["flat"] and result["rss_mb"]["gateway"]["flat"]
    assert result["nothing_lost"] and result["passed"]
    assert result["samples"] == 5  # from t = 20 s, load samples only (the drained one is left out)


def test_a_size_still_growing_after_settling_fails() -> None:
    result = verdicts(_samples([100, 200, 300, 400, 500, 600], [70.0] * 6), K6, settle=10, tolerance=0.1)
    assert not result["tables_bytes"]["flat"] and not result["passed"]


def test_memory_that_keeps_growing_fails_and_a_swing_does_not() -> None:
    sizes = [1000] * 8
    growing = verdicts(_samples(sizes, [70, 72, 74, 76, 78, 80, 82, 84]), K6, settle=0, tolerance=0.1)
    assert growing["rss_mb"]["gateway"]["growth"] > 0.1 and not growing["passed"]
    swinging = verdicts(_samples(sizes, [70, 78, 66, 77, 69, 76, 70, 71]), K6, settle=0, tolerance=0.1)
    assert swinging["rss_mb"]["gateway"]["flat"] and swinging["passed"]


def test_a_request_accepted_but_not_counted_fails() -> None:
    result = verdicts(_samples([1000] * 5, [70.0] * 5, accepted=999), K6, settle=0, tolerance=0.1)
    assert not result["nothing_lost"] and not result["passed"]
