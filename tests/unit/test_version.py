"""`squall --version`: the installed package's version, whose one source is pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from squall.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"squall {project_version()}\n"
    assert importlib.metadata.version("squall") == project_version()


def test_the_command_prints_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "squall.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, f"squall {project_version()}\n", "")
