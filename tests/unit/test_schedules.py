"""Due times, misfire policies, cron time zones and jitter of schedules (pure logic)."""

from __future__ import annotations

import datetime as dt

import pytest

from squall.core import schedules
from squall.core.schedules import Timing, due_times, jitter_offset, plan

T0 = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_interval_due_times_up_to_now_and_the_next_one() -> None:
    dues, following = due_times(Timing(0.2, None), at(0), at(1.0))
    assert dues == [at(0), at(0.2), at(0.4), at(0.6), at(0.8), at(1.0)]
    assert following == at(1.2)


def test_nothing_due_before_the_due_time() -> None:
    dues, following = due_times(Timing(5, None), at(10), at(9.9))
    assert dues == [] and following == at(10)


def test_cron_follows_its_time_zone_across_a_dst_change() -> None:
    paris = Timing(None, "0 3 * * *", "Europe/Paris")
    # 2026-10-25: clocks go back in Paris; 03:00 local is 02:00 UTC afterwards (01:00 UTC in summer).
    before = paris.next_after(dt.datetime(2026, 10, 24, 12, 0, tzinfo=dt.UTC))
    after = paris.next_after(dt.datetime(2026, 10, 25, 12, 0, tzinfo=dt.UTC))
    assert before == dt.datetime(2026, 10, 25, 2, 0, tzinfo=dt.UTC)
    assert after == dt.datetime(2026, 10, 26, 2, 0, tzinfo=dt.UTC)
    summer = paris.next_after(dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC))
    assert summer == dt.datetime(2026, 7, 2, 1, 0, tzinfo=dt.UTC)


def test_grace_is_at_most_one_interval() -> None:
    assert Timing(0.2, None).grace == dt.timedelta(seconds=0.2)
    assert Timing(60, None).grace == dt.timedelta(seconds=schedules.MISFIRE_GRACE_SECONDS)
    assert Timing(None, "* * * * *").grace == dt.timedelta(seconds=schedules.MISFIRE_GRACE_SECONDS)


DUES = [at(0), at(1), at(2), at(3), at(4)]
NOW = at(4.1)
GRACE = dt.timedelta(seconds=0.5)


def test_run_once_runs_the_tick_due_now_and_misses_the_late_ones() -> None:
    result = plan(DUES, NOW, "run_once", 10, GRACE)
    assert result.run == [at(4)] and result.missed == [at(0), at(1), at(2), at(3)]


def test_run_once_runs_the_latest_late_tick_when_none_is_on_time() -> None:
    result = plan(DUES, at(10), "run_once", 10, GRACE)
    assert result.run == [at(4)] and result.missed == DUES[:-1]


def test_skip_runs_only_a_tick_on_time() -> None:
    assert plan(DUES, NOW, "skip", 10, GRACE).run == [at(4)]
    late = plan(DUES, at(10), "skip", 10, GRACE)
    assert late.run == [] and late.missed == DUES


def test_catch_up_runs_up_to_its_limit_of_the_latest() -> None:
    result = plan(DUES, at(10), "catch_up", 3, GRACE)
    assert result.run == [at(2), at(3), at(4)] and result.missed == [at(0), at(1)]
    everything = plan(DUES, at(10), "catch_up", 10, GRACE)
    assert everything.run == DUES and everything.missed == []


def test_every_due_time_is_run_or_missed_exactly_once() -> None:
    for policy in ("skip", "run_once", "catch_up"):
        result = plan(DUES, at(10), policy, 2, GRACE)
        assert sorted(result.run + result.missed) == DUES


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="misfire"):
        plan(DUES, NOW, "sometimes", 1, GRACE)


def test_due_times_keep_the_latest_when_too_many() -> None:
    dues, _ = due_times(Timing(1, None), at(0), at(schedules.MAX_DUE_TIMES + 500))
    assert len(dues) == schedules.MAX_DUE_TIMES
    assert dues[-1] == at(schedules.MAX_DUE_TIMES + 500)


def test_jitter_is_stable_and_bounded() -> None:
    first = jitter_offset("sum", at(0), 2.0)
    assert first == jitter_offset("sum", at(0), 2.0)  # every replica computes the same delay
    assert dt.timedelta(0) <= first < dt.timedelta(seconds=2)
    assert jitter_offset("sum", at(0), 0) == dt.timedelta(0)
    spread = {jitter_offset("sum", at(i), 2.0) for i in range(50)}
    assert len(spread) > 40


def test_tick_key_is_the_schedule_and_utc_due_time() -> None:
    local = at(0).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert (
        schedules.tick_key("sum", local)
        == schedules.tick_key("sum", at(0))
        == "sum@2026-11-25T12:00:00+00:00"
    )


@pytest.mark.parametrize("expression", ["* * * * *", "*/5 9-17 * * mon-fri", "0 3 1 * *"])
def test_valid_cron(expression: str) -> None:
    schedules.validate_cron(expression)


@pytest.mark.parametrize("expression", ["", "every minute", "61 * * * *", "* * *"])
def test_invalid_cron(expression: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        schedules.validate_cron(expression)


def test_time_zones() -> None:
    schedules.validate_timezone("Europe/Paris")
    with pytest.raises(ValueError, match="time zone"):
        schedules.validate_timezone("Mars/Olympus")


def test_a_short_interval_far_behind_costs_bounded_work() -> None:
    # A year behind at 50 ms: 630 million due times; computed arithmetically, the latest kept.
    timing = Timing(0.05, None)
    now = at(365 * 86_400)
    dues, following = due_times(timing, at(0), now)
    assert len(dues) == schedules.MAX_DUE_TIMES
    assert dues[-1] <= now < following == dues[-1] + dt.timedelta(seconds=0.05)
    assert dues[-1] - dues[0] == dt.timedelta(seconds=0.05) * (schedules.MAX_DUE_TIMES - 1)


def test_cron_far_behind_is_walked_in_bounded_steps() -> None:
    timing = Timing(None, "* * * * *")
    now = at(30 * 86_400)  # 43,200 minutes behind
    dues, following = due_times(timing, at(60), now)
    assert len(dues) == schedules.MAX_DUE_TIMES
    assert following <= now  # the next firing goes on from there
