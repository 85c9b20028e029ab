"""Dependency checks: targets (validation) and the state machine; each kind against servers and commands
the tests start is in test_check_kinds.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from squall.core.checks import (
    DependencyState,
    advance,
    check,
    validate_target,
)
from tests.unit.checks_helpers import SECRET

# --- validate_target -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("http", "http://example.com"),
        ("http", "https://example.com:8443/health?deep=1"),
        ("http", "HTTP://Example.com/"),
        ("http", "http://user:pw@127.0.0.1:8080/"),
        ("http", "http://[::1]:8080/"),
        ("tcp", "localhost:5432"),
        ("tcp", "127.0.0.1:1"),
        ("tcp", "db.example.com:65535"),
        ("tcp", "[::1]:4222"),
        ("tcp", "[fe80::1%eth0]:22"),
        ("sql", "postgresql://u:p@db:5432/squall"),
        ("sql", "postgres://db/squall"),
        ("sql", "postgresql+asyncpg://u@127.0.0.1/squall"),
        ("sql", "postgresql:///squall?host=/run/postgresql"),
        ("sql", "postgresql://u:p@h1:5432,h2:5433/squall"),
        ("sql", "postgresql://[::1]:5432/squall"),
        ("sql", "postgresql://u:p@ss:w@rd@db/squall"),
        ("command", "true"),
        ("command", "/usr/lib/check --flag 'two words' \"x\""),
    ],
)
def test_valid_targets(kind: str, target: str) -> None:
    validate_target(kind, target)


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        ("smtp", "mail:25", "unknown dependency kind"),
        ("HTTP", "http://x", "unknown dependency kind"),
        ("http", "", "non-empty"),
        ("tcp", "   ", "non-empty"),
        ("http", "ftp://example.com", "http:// or https://"),
        ("http", "example.com", "http:// or https://"),
        ("http", "http://", "no host"),
        ("http", "http:///path", "no host"),
        ("http", "http://host:99999/", "not a valid URL"),
        ("http", "http://host:port/", "not a valid URL"),
        ("http", "http://a b/", "white space"),
        ("http", "http://x/\x00", "NUL"),
        ("tcp", "nocolon", "host:port"),
        ("tcp", "host:", "port must be"),
        ("tcp", ":80", "host:port"),
        ("tcp", "host:0", "port must be"),
        ("tcp", "host:65536", "port must be"),
        ("tcp", "host:-1", "port must be"),
        ("tcp", "host:8o", "port must be"),
        ("tcp", "host:\u0668\u0660", "port must be"),  # Arabic-Indic digits: isdigit() but not a port
        ("tcp", "::1:80", "brackets"),
        ("tcp", "[nothex]:80", "not an IPv6 address"),
        ("tcp", "[::1]80", "brackets"),
        ("tcp", "[]:80", "not an IPv6 address"),
        ("tcp", "a b:80", "no valid host"),
        ("sql", "mysql://u:p@db/x", "PostgreSQL URL"),
        ("sql", "http://db/x", "PostgreSQL URL"),
        ("sql", "db:5432", "PostgreSQL URL"),
        ("sql", "postgresql://db:0/x", "port must be"),
        ("sql", "postgresql://db:pg/x", "port must be"),
        ("sql", "postgresql://h1:5432,h2:x/db", "port must be"),
        ("sql", "postgresql://[::1/db", "unclosed bracket"),
        ("command", "'unclosed", "not a valid command line"),
        ("command", "echo 'a", "not a valid command line"),
        ("command", "\x00", "NUL"),
    ],
)
def test_invalid_targets(kind: str, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_target(kind, target)


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("sql", f"mysql://squall:{SECRET}@db/x"),
        ("sql", f"postgresql://squall:{SECRET}@db:0/x"),
        ("http", f"ftp://squall:{SECRET}@host/"),
        ("http", f"http://squall:{SECRET}@host:99999/"),
    ],
)
def test_validation_errors_hide_the_password(kind: str, target: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_target(kind, target)
    assert SECRET not in str(caught.value)
    assert "squall" in str(caught.value)  # the rest of the URL is still shown


async def test_check_raises_value_error_for_bad_kind_target_or_timeout() -> None:
    with pytest.raises(ValueError, match="unknown dependency kind"):
        await check("ping", "127.0.0.1", 1.0)
    with pytest.raises(ValueError, match="host:port"):
        await check("tcp", "nocolon", 1.0)
    for timeout in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout_seconds"):
            await check("tcp", "127.0.0.1:80", timeout)


# --- advance ---------------------------------------------------------------------------------------------


def S(state: str, failures: int = 0, successes: int = 0) -> DependencyState:
    return DependencyState(state, consecutive_failures=failures, consecutive_successes=successes)


@pytest.mark.parametrize(
    ("current", "ok", "failure_threshold", "recovery_threshold", "expected"),
    [
        # unknown: the first success is enough, whatever the recovery threshold
        (S("unknown"), True, 3, 5, S("up", 0, 1)),
        (S("unknown", 2, 0), True, 3, 5, S("up", 0, 1)),
        # unknown: failures accumulate up to the failure threshold
        (S("unknown"), False, 3, 1, S("unknown", 1, 0)),
        (S("unknown", 1, 0), False, 3, 1, S("unknown", 2, 0)),
        (S("unknown", 2, 0), False, 3, 1, S("down", 3, 0)),
        (S("unknown"), False, 1, 1, S("down", 1, 0)),
        # up: successes count on, a failure resets them
        (S("up", 0, 1), True, 3, 2, S("up", 0, 2)),
        (S("up", 2, 0), True, 3, 2, S("up", 0, 1)),
        (S("up", 0, 7), False, 3, 2, S("up", 1, 0)),
        (S("up", 1, 0), False, 3, 2, S("up", 2, 0)),
        (S("up", 2, 0), False, 3, 2, S("down", 3, 0)),
        (S("up", 0, 4), False, 1, 2, S("down", 1, 0)),
        # down: successes accumulate up to the recovery threshold, a failure resets them
        (S("down", 3, 0), True, 3, 2, S("down", 0, 1)),
        (S("down", 0, 1), True, 3, 2, S("up", 0, 2)),
        (S("down", 5, 0), True, 3, 1, S("up", 0, 1)),
        (S("down", 0, 1), False, 3, 2, S("down", 1, 0)),
        (S("down", 3, 0), False, 3, 2, S("down", 4, 0)),
        # thresholds are reached, not only passed (a state stored before a threshold was lowered)
        (S("up", 5, 0), False, 3, 2, S("down", 6, 0)),
        (S("down", 0, 5), True, 3, 2, S("up", 0, 6)),
    ],
)
def test_advance_transitions(
    current: DependencyState,
    ok: bool,
    failure_threshold: int,
    recovery_threshold: int,
    expected: DependencyState,
) -> None:
    assert advance(current, ok, failure_threshold, recovery_threshold) == expected


def test_advance_over_a_sequence() -> None:
    outcomes = "FFSFFFSSFSSS"  # F: failure, S: success; failure threshold 3, recovery threshold 3
    state = DependencyState()
    seen = []
    for outcome in outcomes:
        state = advance(state, outcome == "S", failure_threshold=3, recovery_threshold=3)
        seen.append(state.state)
    assert seen == [
        "unknown",
        "unknown",
        "up",  # unknown: the first success
        "up",
        "up",
        "down",  # three failures in a row
        "down",
        "down",
        "down",  # a failure resets the two successes
        "down",
        "down",
        "up",  # three successes in a row
    ]


def test_dependency_state_defaults_and_immutability() -> None:
    assert DependencyState() == S("unknown", 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DependencyState().state = "up"  # type: ignore[misc]


@pytest.mark.parametrize(("failure_threshold", "recovery_threshold"), [(0, 1), (1, 0), (-1, 3)])
def test_advance_rejects_thresholds_below_one(failure_threshold: int, recovery_threshold: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        advance(DependencyState(), True, failure_threshold, recovery_threshold)


@pytest.mark.parametrize(
    "changes", [{"state": "sideways"}, {"consecutive_failures": -1}, {"consecutive_successes": -1}]
)
def test_dependency_state_rejects_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DependencyState(**changes)
