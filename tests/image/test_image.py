"""The image built from the Dockerfile: its configuration, what the recipe adds to its base (and what it
must not leave there), its version, the optional extras it carries, its SBOM and its size."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deploy import image as recipe
from squall.core.settings import load_settings
from tests.deploy.manifests import render_chart
from tests.image.pods import chart_specs, run_once

pytestmark = pytest.mark.image

# What the recipe may change in its base: the virtual environment and the user and group it adds.
ACCOUNT_FILES = {"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/.pwd.lock"}
COMPILERS = re.compile(r"(.*-)?(gcc|g\+\+|cc|c\+\+|cpp|clang|clang\+\+|ld|as|make|tcc)(-[\d.]+)?")
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins() -> dict[str, str]:
    """name -> version of every package requirements/image.lock pins."""
    pins = re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", recipe.IMAGE_LOCK.read_text(), re.MULTILINE
    )
    return {_normal(name): version for name, version in pins}


def test_configuration(image: recipe.Built) -> None:
    config = recipe.inspect(image.reference)["Config"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", config["User"]) and config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["squall"] and config["Cmd"] == ["gateway"]
    assert config["WorkingDir"] == "/tmp" and config["StopSignal"] == "SIGTERM"
    assert "PATH=/opt/squall/bin:" in " ".join(config["Env"])
    # The ports the image exposes are the roles' defaults and the chart's container ports.
    settings = load_settings()
    defaults = {
        "gateway": settings.gateway.port,
        "processor": settings.processor.http_port,
        "scheduler": settings.scheduler.http_port,
    }
    specs = chart_specs(render_chart())
    assert {role: specs[role].port("http") for role in defaults} == defaults
    assert set(config["ExposedPorts"]) == {f"{port}/tcp" for port in defaults.values()}
    labels = config["Labels"]
    prefix = "org.opencontainers.image."
    assert labels[prefix + "version"] == image.version == recipe.package_version()
    assert labels[prefix + "base.name"] == image.base  # the base it was built on, not the default
    assert labels[prefix + "title"] == "squall" and labels[prefix + "licenses"] == "Apache-2.0"
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels[prefix + "revision"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels[prefix + "created"])


def test_the_recipe_adds_its_environment_and_its_user_only(image: recipe.Built) -> None:
    diff = subprocess.run(
        [*recipe.PODMAN, "image", "diff", image.reference, image.base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    changed = {line.split(" ", 1)[1] for line in diff if line}
    assert "/opt/squall/bin/squall" in changed
    others = {
        path
        for path in changed
        if not path.startswith("/opt/squall/") and path.rstrip("-") not in ACCOUNT_FILES
    }
    assert others == {"/etc", "/opt", "/opt/squall"}, "the build's sources, wheels and tools stay behind"


def test_no_build_tools_caches_version_control_tests_or_keys(image: recipe.Built) -> None:
    found: dict[str, list[str]] = {"compiler": [], "pip": [], "cache": [], "git": [], "tests": [], "key": []}
    with recipe.mounted(image.reference) as root:
        for folder in ("usr/bin", "usr/local/bin", "usr/sbin", "opt/squall/bin"):
            found["compiler"] += [p.name for p in (root / folder).iterdir() if COMPILERS.fullmatch(p.name)]
        packages = recipe.site_packages(root)
        found["pip"] = [
            p.name for p in packages.iterdir() if re.match(r"(pip|setuptools|wheel|hatchling)\b", p.name)
        ]
        found["pip"] += [p.name for p in (root / "opt/squall/bin").glob("pip*")]
        for path in (root / "opt/squall").rglob("*"):
            relative = "/" + path.relative_to(root).as_posix()
            if path.name == ".git":
                found["git"].append(relative)
            if (path.is_dir() and path.name in ("tests", "test")) or path.name == "conftest.py":
                found["tests"].append(relative)
            if path.is_file() and not path.is_symlink() and PRIVATE_KEY.search(path.read_bytes()):
                found["key"].append(relative)
        for place in ("root/.cache", "tmp", "var/cache/pip", "src", "wheels", "dist", "opt/build"):
            if (root / place).exists() and any((root / place).iterdir()):
                found["cache"].append(place)
        assert os.stat(root / "tmp").st_mode & 0o1777 == 0o1777
    assert found == {key: [] for key in found}


def test_squall_version_inside_the_image_is_the_package_version(image: recipe.Built) -> None:
    result = run_once(image.reference, "--version")
    assert (result.returncode, result.stdout) == (0, f"squall {recipe.package_version()}\n"), result.stderr


# Inside the image: every module of every distribution an image extra requires imports, then the code that
# uses the extra (OpenTelemetry: the exporter set up, then flushed and shut down).
IMPORT_EXTRAS = r"""
import importlib, importlib.metadata as md, json, re, sys
from squall.core import otel
from squall.core.settings import OtelSettings
report = {}
for extra in sys.argv[1:]:
    marker = re.compile(r"extra *== *['\"]" + extra + r"['\"]")
    names = [re.split(r"[ ;<>=!~\[(]", r)[0] for r in md.requires("squall") if marker.search(r)]
    modules = set()
    for name in names:
        for path in md.distribution(name).files:
            if path.suffix == ".py" and path.parts[0] not in ("..", "bin") and path.stem != "__main__":
                parts = path.with_suffix("").parts
                modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for module in sorted(modules):
        importlib.import_module(module)
    report[extra] = {"distributions": sorted(names), "modules": len(modules)}
stop = otel.setup(OtelSettings(enabled=True, endpoint="http://127.0.0.1:9/v1/traces"), "image-test", "x")
assert otel.tracer is not None
stop()
print(json.dumps(report))
"""


def test_the_image_imports_every_extra_the_chart_can_switch_on(image: recipe.Built) -> None:
    extras = recipe.project()["project"]["optional-dependencies"]
    assert set(recipe.IMAGE_EXTRAS) | set(recipe.NOT_IN_IMAGE) == set(extras)
    result = run_once(image.reference, "-c", IMPORT_EXTRAS, *recipe.IMAGE_EXTRAS, entrypoint=["python3"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for extra in recipe.IMAGE_EXTRAS:
        wanted = {re.split(r"[ ;<>=!~\[(]", r)[0] for r in extras[extra]}
        assert set(report[extra]["distributions"]) == wanted and report[extra]["modules"] > len(wanted)


def test_the_sbom_lists_what_the_image_runs(image: recipe.Built) -> None:
    sbom = json.loads(recipe.SBOM.read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["metadata"]["component"]["name"] == "squall"
    listed = {_normal(c["name"]): c["version"] for c in sbom["components"]}
    assert listed == locked_pins()
    assert all(c["purl"].startswith("pkg:pypi/") for c in sbom["components"])


def test_the_recipe_adds_less_than_100_mb(image: recipe.Built) -> None:
    added = recipe.inspect(image.reference)["Size"] - recipe.inspect(image.base)["Size"]
    assert 0 < added < 100e6, f"{added / 1e6:.1f} MB"


def test_the_base_is_a_plain_debian_one(image: recipe.Built) -> None:
    """Nothing of the recipe comes from the local base: it has no user of Squall's and no /opt/squall."""
    with recipe.mounted(image.base) as root:
        assert not (root / "opt" / "squall").exists()
        assert "squall" not in Path(root / "etc" / "passwd").read_text()
        assert (root / "usr" / "bin" / "python3").exists() and not (root / "usr" / "bin" / "python").exists()
