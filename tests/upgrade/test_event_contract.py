"""The event contract across releases: this code reads every message each recorded release published, and
publishes exactly what its own recording holds (a change to the wire format is a new recording, made on
purpose: docs/design.md, "Releases and upgrades")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deploy.sync import version

from tests.upgrade import event_contract

RECORDINGS = Path(__file__).parent / "events"
RELEASES = sorted(p.stem for p in RECORDINGS.glob("*.json"))


def recording(release: str) -> list[dict[str, object]]:
    return list(json.loads((RECORDINGS / f"{release}.json").read_text()))


def test_this_release_publishes_what_its_recording_holds() -> None:
    assert version() in RELEASES, (
        f"no recording of {version()}'s messages: "
        f"python tests/upgrade/event_contract.py write > tests/upgrade/events/{version()}.json"
    )
    assert event_contract.written() == recording(version())


@pytest.mark.parametrize("release", RELEASES)
def test_every_recorded_release_is_read_as_this_release_reads_its_own(release: str) -> None:
    """Same meaning, not only no error: each release recorded the same requests and poll task."""
    assert [event_contract.read(m) for m in recording(release)] == [
        event_contract.read(m) for m in recording(version())
    ]


def test_each_message_type_is_recorded() -> None:
    assert [m["type"] for m in recording(version())] == ["request_submitted", "request_batch", "poll_task"]
