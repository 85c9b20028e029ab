"""bench.ceiling: a bare Tornado server driven by the benchmark's own k6 script, its CPU and k6's counted."""

from __future__ import annotations

from bench.ceiling import measure


async def test_the_bare_server_answers_every_request_and_both_sides_cpu_is_counted() -> None:
    result = await measure(vus=2, duration="2s", items=1)
    assert result["requests_per_second"] > 0
    assert result["not_accepted"] == 0  # every answer was the handler's 202
    assert result["http_p50_ms"] <= result["http_p99_ms"]
    assert result["us_per_request"]["server"] > 0
    assert result["us_per_request"]["k6"] > 0
