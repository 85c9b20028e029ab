"""The services' event loop: uvloop's by default, asyncio's when asked for or when uvloop is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from squall.core.lifecycle import loop_factory
from squall.core.settings import Settings


def test_services_run_on_uvloop_by_default() -> None:
    factory = loop_factory(Settings())
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_loop_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_EVENT_LOOP", "asyncio")
    assert loop_factory(Settings()) is None  # asyncio.Runner's default: asyncio's own loop
    with asyncio.Runner(loop_factory=loop_factory(Settings())) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)


def test_asyncio_loop_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert loop_factory(Settings()) is None


def test_an_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
