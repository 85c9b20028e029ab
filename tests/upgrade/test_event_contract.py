"""The event contract across releases: this code reads every message each recorded release published, and
publishes exactly what its own recording holds (a change to the wire format is a new recording, made on
purpose: docs/design.md, "Releases and upgrades")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deploy.sync import version

from tests.upgrade import event_contract
from tests.upgrade.release import BuiltRelease

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


@pytest.mark.upgrade
def test_the_previous_release_writes_its_recording_and_reads_this_releases_messages(
    previous_release: BuiltRelease, tmp_path: Path
) -> None:
    """The other direction of a rolling upgrade, by the previous release's own code: its consumers read
    what this release publishes, and its recording is what it really publishes."""
    script = str(Path(event_contract.__file__))
    written = previous_release.run_python(script, "write", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout) == recording(previous_release.version)
    ours = recording(version())
    read = previous_release.run_python(script, "read", cwd=tmp_path, input=json.dumps(ours))
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout) == [event_contract.read(m) for m in ours]
