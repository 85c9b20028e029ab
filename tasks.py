#!/usr/bin/env python3
"""Squall's development tasks; needs only Python 3.11+ (it makes its own virtual environment).

python3 tasks.py dev [squall dev options]   run the whole system locally
python3 tasks.py test [pytest options]      lint, type-check and run every test
python3 tasks.py image                      build the container image here (deploy/image.py, docs/deploy.md)
python3 tasks.py lock [--upgrade]           regenerate requirements/*.lock from pyproject.toml
python3 tasks.py lint | typecheck | setup | bench
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SQUALL_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".squall-installed"


def run(*argv: str | Path) -> None:
    result = subprocess.run([str(a) for a in argv], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(result.returncode)


def setup() -> None:
    """Create .venv and install Squall with its development extras; again only when pyproject changes."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may run on an older Python first
        sys.exit("Squall needs Python 3.11 or newer")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest)


def ensure_promtool() -> None:
    """promtool (the Prometheus rule checker the tests run) in the venv's bin, when none is on PATH.

    No PyPI package ships it; Debian's ``prometheus`` package does. Only promtool is taken out of the
    downloaded package (it needs nothing but libc): installing the package itself would add a Prometheus
    server and its service. ``apt-get update`` runs only as root and only if the download fails without it.
    """
    if (BIN / "promtool").exists() or shutil.which("promtool"):
        return
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        sys.stderr.write("promtool is missing: install Prometheus 2.x's promtool on PATH (docs/runbook.md)\n")
        return
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o777)  # apt downloads as its own unprivileged user when it can

        def download() -> bool:
            return subprocess.run(["apt-get", "download", "prometheus"], cwd=scratch).returncode == 0

        if not download() and not (
            os.geteuid() == 0 and subprocess.run(["apt-get", "update", "-qq"]).returncode == 0 and download()
        ):
            sys.stderr.write("promtool is missing and Debian's prometheus package could not be fetched\n")
            return
        package = next(Path(scratch).glob("prometheus_*.deb"))
        run("dpkg-deb", "-x", package, Path(scratch) / "root")
        shutil.copy2(Path(scratch) / "root" / "usr" / "bin" / "promtool", BIN / "promtool")


PYTHON_SOURCES = ("core", "services", "tests", "bench", "deploy", "tasks.py")


def lint() -> None:
    run(BIN / "ruff", "check", *PYTHON_SOURCES)
    run(BIN / "ruff", "format", "--check", *PYTHON_SOURCES)


def typecheck() -> None:
    run(BIN / "mypy", "core", "services")


def main() -> None:
    task, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("help", [])
    if task in ("help", "-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return
    setup()
    ensure_promtool()
    if task == "setup":
        return
    if task == "dev":
        os.execv(BIN / "squall", [str(BIN / "squall"), "dev", *args])
    if task == "lint":
        lint()
    elif task == "typecheck":
        typecheck()
    elif task == "test":
        lint()
        typecheck()
        run(PYTHON, "-m", "pytest", *args)
    elif task == "bench":
        run(PYTHON, "-m", "bench", *args)
    elif task in ("image", "lock"):
        run(PYTHON, "-m", "deploy.image", task, *args)
    else:
        sys.exit(f"unknown task {task!r}; see python3 tasks.py help")


if __name__ == "__main__":
    main()
