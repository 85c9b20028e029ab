"""Build Squall's container image on this machine, from the repository's Dockerfile, with no Docker daemon
and no registry: ``python3 tasks.py image`` (``python3 tasks.py lock`` regenerates the lock files).

1. Tools: buildah, podman, mmdebstrap and runc, from Debian's packages when one is missing (apt-get).
2. Base: a minimal Debian root file system with Python (mmdebstrap), made once per package list: cached as
   ``build/image/base-<key>.tar`` and imported as ``localhost/squall-base:<key>``. It stands in for the
   Dockerfile's default base (the official slim Python image), which no registry here serves.
3. Wheels: the files named by ``requirements/image.lock`` and ``build.lock``, hash-checked, downloaded on the
   host into ``requirements/wheels/``, so the build itself needs no network (``--build-arg WHEELS=context``).
4. Build: ``buildah bud --isolation chroot`` of the Dockerfile on that base, tagged
   ``localhost/squall:<version>`` and ``localhost/squall:latest`` in the local containers storage.
5. SBOM: CycloneDX JSON of the image's Python environment (``cyclonedx-py environment`` on the image's
   site-packages, the image mounted), ``build/image/sbom.cdx.json``.
6. Report: the image's size, its base's, and each layer.

The lock files are pip-tools' ``pip-compile --generate-hashes`` output for pyproject.toml's dependencies plus
the extras a deployment can switch on (:data:`IMAGE_EXTRAS`), and for its build system; each starts with a
digest of what it was made from, so a test finds a stale lock without the network (:func:`lock_is_current`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "image"
WHEELHOUSE = ROOT / "requirements" / "wheels"  # in the build context; its files are never committed
SBOM = BUILD / "sbom.cdx.json"
IMAGE_LOCK = ROOT / "requirements" / "image.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
REPOSITORY = "localhost/squall"
BASE_REPOSITORY = "localhost/squall-base"

# Extras of pyproject.toml the image carries: those a deployment switches on with a setting alone (the
# chart's settings.extra), so they must already be installed. The others, and why not.
IMAGE_EXTRAS = ("otel",)  # SQUALL_OTEL__ENABLED=true
NOT_IN_IMAGE = {
    "embedded": "the NATS and PostgreSQL servers of `squall dev`; a cluster runs its own",
    "dev": "tests, linters and these build tools",
}

# Debian tools of the build and of the image tests: command -> package.
TOOLS = {"buildah": "buildah", "podman": "podman", "mmdebstrap": "mmdebstrap", "runc": "runc"}
# The base: what the recipe needs of any base (python3 with venv, libstdc++ for greenlet, useradd), from
# Debian 12, whose Python is the 3.11 the lock files are made for.
SUITE = "bookworm"
BASE_PYTHON = "3.11"
BASE_PACKAGES = ("python3", "python3-venv", "libstdc++6", "passwd")
BASE_OPTIONS = (
    "--variant=essential",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)
# Podman as this machine allows it: crun fails on its hybrid cgroup layout and without CAP_SYS_RESOURCE
# (setrlimit above the hard limit); runc with cgroupfs and limits within the current ones works.
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
RUN_LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


class ImageError(RuntimeError):
    pass


def sh(*argv: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run a command; its standard output, or ImageError with what it printed."""
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_version() -> str:
    return str(project()["project"]["version"])


# --- tools ------------------------------------------------------------------------------------------------


def ensure_tools() -> None:
    """Install the missing tools with apt-get (as root; ``apt-get update`` only if the install fails)."""
    missing = sorted({package for command, package in TOOLS.items() if not shutil.which(command)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ImageError(f"install {', '.join(missing)} (Debian packages of the same names) and run again")
    install = ["apt-get", "install", "--yes", "--quiet", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        sh("apt-get", "update", "--quiet", env=env)
        sh(*install, env=env)


# --- base -------------------------------------------------------------------------------------------------


def base_key() -> str:
    recipe = json.dumps({"suite": SUITE, "packages": BASE_PACKAGES, "options": BASE_OPTIONS})
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def make_base() -> str:
    """The local base image's reference; made (about a minute) only when neither it nor its tar exists."""
    key = base_key()
    reference = f"{BASE_REPOSITORY}:{key}"
    if image_id(reference):
        return reference
    tar = BUILD / f"base-{key}.tar"
    if not tar.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        sh("mmdebstrap", "--quiet", *BASE_OPTIONS, f"--include={','.join(BASE_PACKAGES)}", SUITE, partial)
        partial.rename(tar)
    sh(*PODMAN, "import", "--message", f"mmdebstrap {SUITE}: {' '.join(BASE_PACKAGES)}", tar, reference)
    return reference


# --- lock files and wheels --------------------------------------------------------------------------------

DIGEST_PREFIX = "# made from pyproject.toml, sha256:"


def lock_inputs() -> dict[Path, dict[str, Any]]:
    """What each lock file is made from: the parts of pyproject.toml that decide its content."""
    data = project()
    extras = data["project"]["optional-dependencies"]
    return {
        IMAGE_LOCK: {
            "dependencies": data["project"]["dependencies"],
            "extras": {name: extras[name] for name in IMAGE_EXTRAS},
        },
        BUILD_LOCK: {"build-system": data["build-system"]["requires"]},
    }


def input_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def lock_is_current(lock: Path) -> bool:
    """The lock's first line names the digest of what it was made from: is that pyproject.toml's now?"""
    first = lock.read_text().partition("\n")[0] if lock.exists() else ""
    return first == DIGEST_PREFIX + input_digest(lock_inputs()[lock])


def lock(upgrade: bool = False) -> None:
    """Regenerate both lock files with pip-compile (needs the package index); keeps the pins that still fit
    unless ``upgrade``."""
    common = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--allow-unsafe",
        "--strip-extras",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--no-emit-trusted-host",
        *(["--upgrade"] if upgrade else []),
    ]
    extras = [f"--extra={name}" for name in IMAGE_EXTRAS]
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "python3 tasks.py lock"}
    for path, options in (
        (IMAGE_LOCK, extras),
        (BUILD_LOCK, ["--only-build-deps", "--build-deps-for=wheel"]),
    ):
        path.parent.mkdir(exist_ok=True)
        relative = path.relative_to(ROOT)
        sh(*common, *options, f"--output-file={relative}", "pyproject.toml", env=env)
        body = path.read_text()
        if body.startswith(DIGEST_PREFIX):  # pip-compile keeps the lines above its own header
            body = body.partition("\n")[2]
        path.write_text(DIGEST_PREFIX + input_digest(lock_inputs()[path]) + "\n" + body)


def locked_hashes(*locks: Path) -> set[str]:
    return {
        line.split("--hash=sha256:", 1)[1].split()[0]
        for path in locks
        for line in path.read_text().splitlines()
        if "--hash=sha256:" in line
    }


def wheelhouse() -> Path:
    """requirements/wheels: every file of the two lock files, hash-checked by pip, and no other wheel."""
    for path in (IMAGE_LOCK, BUILD_LOCK):
        if not lock_is_current(path):
            raise ImageError(f"{path.relative_to(ROOT)} is stale: run python3 tasks.py lock")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    for path in (IMAGE_LOCK, BUILD_LOCK):
        sh(
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            f"--python-version={BASE_PYTHON}",
            f"--dest={WHEELHOUSE}",
            f"--requirement={path}",
        )
    wanted = locked_hashes(IMAGE_LOCK, BUILD_LOCK)
    for wheel in WHEELHOUSE.glob("*.whl"):
        if hashlib.sha256(wheel.read_bytes()).hexdigest() not in wanted:
            wheel.unlink()  # left from an older lock
    return WHEELHOUSE


# --- build ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    reference: str  # localhost/squall:<version>
    version: str
    base: str
    seconds: dict[str, float]  # how long each step took


def revision() -> str:
    """The commit built, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        return "unknown"
    commit = sh("git", "rev-parse", "HEAD").strip()
    clean = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode == 0
    return commit if clean else f"{commit}-dirty"


def build_args(base: str, version: str) -> list[str]:
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "PYTHON_IMAGE": base,
        "WHEELS": "context",
        "VERSION": version,
        "REVISION": revision(),
        "CREATED": created,
    }
    return [f"--build-arg={name}={value}" for name, value in values.items()]


def image_id(reference: str) -> str | None:
    found = subprocess.run(
        [*PODMAN, "image", "inspect", "--format={{.Id}}", reference], capture_output=True, text=True
    )
    return found.stdout.strip() if found.returncode == 0 else None


def buildah_bud(dockerfile: Path, base: str, version: str, reference: str) -> None:
    """The recipe built on the local base, from the wheels in the build context (no network)."""
    sh(
        "buildah",
        "bud",
        "--isolation=chroot",  # no OCI runtime for RUN steps (crun fails here; see PODMAN)
        "--layers",
        "--force-rm",  # no working container left behind, even when a step fails
        "--pull-never",
        "--quiet",
        *build_args(base, version),
        f"--file={dockerfile}",
        f"--tag={reference}",
        f"--tag={REPOSITORY}:latest",
        ROOT,
    )


def build(dockerfile: Path = ROOT / "Dockerfile", sbom: bool = True) -> Built:
    """Everything ``python3 tasks.py image`` does but the report; each step timed."""
    seconds: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        seconds[name] = round(time.monotonic() - started, 1)

    with step("tools"):
        ensure_tools()
    with step("base"):
        base = make_base()
    with step("wheels"):
        wheelhouse()
    version = package_version()
    reference = f"{REPOSITORY}:{version}"
    with step("build"):
        replaced = image_id(reference)
        buildah_bud(dockerfile, base, version, reference)
        if replaced and replaced != image_id(reference):
            # The build it replaces, and the cache layers only it used: each build would otherwise leave
            # its 90 MB behind in the containers storage.
            subprocess.run([*PODMAN, "rmi", replaced], capture_output=True)
    if sbom:
        with step("sbom"):
            write_sbom(reference)
    return Built(reference, version, base, seconds)


# --- the image's file system, SBOM, report ----------------------------------------------------------------


@contextmanager
def mounted(reference: str) -> Iterator[Path]:
    """The image's root file system, mounted read-only on the host for the duration."""
    path = Path(sh(*PODMAN, "image", "mount", reference).strip())
    try:
        yield path
    finally:
        sh(*PODMAN, "image", "unmount", reference)


def site_packages(root: Path) -> Path:
    (found,) = (root / "opt" / "squall" / "lib").glob("python3.*/site-packages")
    return found


def write_sbom(reference: str, output: Path = SBOM) -> Path:
    """CycloneDX JSON of the packages installed in the image's virtual environment.

    cyclonedx-py reads an environment's distributions from the paths its interpreter reports. The image's
    interpreter cannot run here, so a virtual environment is made whose interpreter is this one (the same
    Python minor version) and whose site-packages is the mounted image's: it reports exactly those."""
    with mounted(reference) as root, tempfile.TemporaryDirectory() as scratch:
        packages = site_packages(root)
        minor = packages.parent.name  # python3.11
        if minor != f"python{sys.version_info.major}.{sys.version_info.minor}":
            raise ImageError(f"the image has {minor}: run the SBOM step with that Python")
        view = Path(scratch) / "view"
        (view / "bin").mkdir(parents=True)
        (view / "lib" / minor).mkdir(parents=True)
        (view / "lib" / minor / "site-packages").symlink_to(packages)
        (view / "bin" / "python").symlink_to(sys.executable)
        home = Path(sys.executable).resolve().parent
        (view / "pyvenv.cfg").write_text(f"home = {home}\ninclude-system-site-packages = false\n")
        output.parent.mkdir(parents=True, exist_ok=True)
        sh(
            Path(sys.executable).with_name("cyclonedx-py"),
            "environment",
            "--output-format=JSON",
            f"--output-file={output}",
            "--mc-type=application",
            "--pyproject=pyproject.toml",
            view,
        )
    return output


def inspect(reference: str) -> dict[str, Any]:
    (found,) = json.loads(sh(*PODMAN, "image", "inspect", reference))
    return found  # type: ignore[no-any-return]


def layers(reference: str) -> list[tuple[int, str]]:
    """(bytes, instruction) of each layer of the image that holds files, oldest first."""
    history = json.loads(sh(*PODMAN, "history", "--format=json", "--no-trunc", reference))
    found = []
    for entry in reversed(history):
        # "|4 CREATED=... /bin/sh -c groupadd ..." (a RUN and its build arguments), "/bin/sh -c #(nop) COPY"
        instruction = re.sub(r"^\|\d+ (\S+=\S* )*|/bin/sh -c (#\(nop\) )?", "", str(entry["CreatedBy"]))
        if entry["size"]:
            found.append((int(entry["size"]), " ".join(instruction.split())))
    return found


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def report(built: Built) -> str:
    size, base = inspect(built.reference)["Size"], inspect(built.base)["Size"]
    lines = [
        f"{built.reference} (also {REPOSITORY}:latest): {megabytes(size)}; its base {built.base} "
        f"{megabytes(base)}; added by the recipe {megabytes(size - base)}",
        "layers:",
        *(f"  {megabytes(count):>9}  {instruction[:100]}" for count, instruction in layers(built.reference)),
        f"SBOM: {SBOM.relative_to(ROOT)}",
        "seconds: " + ", ".join(f"{name} {value:g}" for name, value in built.seconds.items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tasks.py image|lock", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image", help="build localhost/squall:<version> and report its size and layers")
    locking = sub.add_parser("lock", help="regenerate requirements/*.lock from pyproject.toml")
    locking.add_argument("--upgrade", action="store_true", help="newest versions within pyproject's ranges")
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            lock(args.upgrade)
            sys.stdout.write(f"wrote {IMAGE_LOCK.relative_to(ROOT)} and {BUILD_LOCK.relative_to(ROOT)}\n")
        else:
            sys.stdout.write(report(build()) + "\n")
    except ImageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
