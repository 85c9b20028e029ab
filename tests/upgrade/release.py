"""The previous release, built from this repository's own history into a virtual environment of its own.

``PREVIOUS_RELEASE`` is the one place that names it: when a release is cut, the rehearsal moves to it (its
version and the commit it was cut from).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Release:
    version: str
    commit: str


# When a release is cut, the rehearsal moves to it: name its version and commit here.
PREVIOUS_RELEASE = Release(version="0.1.0", commit="a640bee53c952b39671add73bd9db411d61ac0c0")


@dataclass(frozen=True)
class BuiltRelease:
    """A release installed in a virtual environment of its own (no editable install, nothing of the working
    tree on its path): ``python`` runs that release's code only."""

    release: Release
    source: Path  # the release's tree, as ``git archive`` gave it
    python: Path
    build_seconds: float  # 0.0 when an earlier build was reused

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def venv(self) -> Path:
        return self.python.parents[1]

    def env(self, **settings: str) -> dict[str, str]:
        """An environment for this release's processes: the caller's, minus Python's search path and any
        SQUALL_* setting of the caller, plus ``settings``."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_") and k != "PYTHONPATH"}
        return {**inherited, "PYTHONNOUSERSITE": "1", **settings}

    def run_python(
        self, *args: str, cwd: Path, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``python *args`` of this release in ``cwd`` (a folder outside the working tree: Python puts the
        current folder first on its path)."""
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def build(release: Release, build_root: Path = ROOT / "build" / "upgrade") -> BuiltRelease:
    """The release's tree and virtual environment under ``build_root/<commit>``, built once per commit.

    A virtual environment cannot be moved once made (its scripts name their own path), so rather than build
    elsewhere and rename, the build is made in place and marked complete last, by an atomic rename: a build
    that was interrupted has no mark and is made again. A lock serialises concurrent test sessions."""
    folder = build_root / release.commit
    build_root.mkdir(parents=True, exist_ok=True)
    with open(build_root / f"{release.commit}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mark = folder / "complete.json"
        wanted = {"commit": release.commit, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        built = BuiltRelease(release, folder / "src", folder / "venv" / "bin" / "python", 0.0)
        if mark.exists() and json.loads(mark.read_text()) == wanted and built.python.exists():
            return built
        started = time.monotonic()
        shutil.rmtree(folder, ignore_errors=True)
        _extract(release.commit, built.source)
        subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
        # A regular (not editable) install: the release's files are copied into the environment.
        subprocess.run(
            [str(built.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "."],
            cwd=built.source,
            env=built.env(),
            check=True,
        )
        partial = folder / "complete.json.partial"
        partial.write_text(json.dumps(wanted))
        partial.replace(mark)
        return BuiltRelease(release, built.source, built.python, time.monotonic() - started)


def _extract(commit: str, into: Path) -> None:
    """The commit's tree from the repository the tests run from (a worktree shares its objects)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=False, capture_output=True
    )
    assert archive.returncode == 0, (
        f"the previous release's commit {commit} is not in this clone's history (a shallow clone? "
        f"git fetch --unshallow): {archive.stderr.decode(errors='replace').strip()}"
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
