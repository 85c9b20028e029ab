"""Fixtures of the unit tests: no network, no servers, and no ``SQUALL_*`` setting leaking in from outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_squall_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are read from the environment: start every test from the defaults."""
    for name in list(os.environ):
        if name.upper().startswith("SQUALL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tests.unit.sample_processings`` importable however pytest was started."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
