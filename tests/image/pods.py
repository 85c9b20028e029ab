"""The chart's containers run with podman from the image built here, the way a kubelet would run them.

Each container gets what its rendered pod spec says: the image's own user (checked against the pod's
``runAsUser``/``runAsGroup``, with ``fsGroup`` as a supplementary group), a read-only root file system when
``readOnlyRootFilesystem`` is set, every capability dropped, no privilege escalation, podman's default
seccomp profile (``RuntimeDefault``), its environment (the settings ConfigMap through ``envFrom``, plain
values, the pod's name, Secrets) and its volumes (an ``emptyDir`` becomes a tmpfs, a Secret read-only files
owned by the fsGroup). Only what a machine without Kubernetes needs is changed, by the caller: the network
is the host's, so addresses (NATS, PostgreSQL, the gateway) and listening ports are set through ``env``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.image import PODMAN, RUN_LIMITS

from tests.deploy.manifests import containers, named, pod_template

Obj = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """One container of the rendered chart, with the pod spec around it."""

    container: Obj
    pod: Obj

    @property
    def grace_seconds(self) -> int:
        return int(self.pod.get("terminationGracePeriodSeconds", 30))

    def port(self, name: str) -> int:
        (port,) = [p["containerPort"] for p in self.container.get("ports", []) if p["name"] == name]
        return int(port)


def chart_specs(objects: list[Obj]) -> dict[str, Spec]:
    """Every container of the chart's workloads by name: gateway, processor, scheduler, migrate (an init
    container, the same in each workload) and submit (the ``helm test`` pod's)."""
    specs: dict[str, Spec] = {}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        pod = pod_template(obj)["spec"]
        for container in containers(pod):  # init containers first
            specs.setdefault(container["name"], Spec(container, pod))
    return specs


def _mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


@dataclass
class Container:
    """A container started in the background (``podman run`` in the foreground of a child process)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.output().splitlines()[-lines:])

    def pid(self) -> int:
        """The container's first process, as the host sees it."""
        return int(subprocess.check_output([*PODMAN, "inspect", "--format={{.State.Pid}}", self.name]))

    def stop(self, grace_seconds: int) -> tuple[int, float]:
        """What a kubelet does on deletion: the image's stop signal, SIGKILL after the grace period. The exit
        code of the container's process and the seconds it took."""
        started = time.monotonic()
        # A container that ended already is gone (--rm): its exit code below tells.
        subprocess.run([*PODMAN, "stop", f"--time={grace_seconds}", self.name], capture_output=True)
        code = self.process.wait(grace_seconds + 30)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """Cleanup after a failed test: nothing may outlive the test session."""
        if self.process.poll() is None:
            subprocess.run([*PODMAN, "rm", "--force", "--time=0", self.name], capture_output=True)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)


class Kubelet:
    """Runs the chart's containers from ``image``; ``secrets`` holds the values of the Secrets the chart
    references, by (Secret, key); files and logs go under ``scratch``."""

    def __init__(
        self, image: str, objects: list[Obj], secrets: Mapping[tuple[str, str], str], scratch: Path
    ) -> None:
        self.image = image
        self.objects = objects
        self.secrets = secrets
        self.scratch = scratch
        self.image_user = json.loads(
            subprocess.check_output([*PODMAN, "image", "inspect", "--format={{json .Config.User}}", image])
        )
        self.started: list[Container] = []

    def argv(self, spec: Spec, pod_name: str, env: Mapping[str, str]) -> list[str]:
        environment = {**self.environment(spec.container, pod_name), **env}
        argv = [
            *PODMAN,
            "run",
            "--rm",
            f"--name={pod_name}-{os.getpid()}",
            "--pull=never",
            "--network=host",
            *RUN_LIMITS,
            *self.security(spec),
            *self.volumes(spec, pod_name),
            *(f"--env={name}={value}" for name, value in sorted(environment.items())),
        ]
        if "command" in spec.container:
            argv.append(f"--entrypoint={json.dumps(spec.container['command'])}")
        return [*argv, self.image, *spec.container.get("args", [])]

    def environment(self, container: Obj, pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            config = named(self.objects, "ConfigMap", source["configMapRef"]["name"])
            env.update({name: str(value) for name, value in config["data"].items()})
        for var in container.get("env", []):
            source = var.get("valueFrom", {})
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[var["name"]] = pod_name
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[var["name"]] = self.secrets[(ref["name"], ref["key"])]
            else:
                raise AssertionError(f"an environment source this harness does not know: {var}")
        return env

    def security(self, spec: Spec) -> list[str]:
        pod = spec.pod.get("securityContext", {})
        own = spec.container.get("securityContext", {})
        user = f"{own.get('runAsUser', pod['runAsUser'])}:{own.get('runAsGroup', pod['runAsGroup'])}"
        # The chart names the image's own user; the container runs as the image says (no --user).
        assert user == self.image_user and not user.startswith("0:"), (user, self.image_user)
        assert own["seccompProfile"]["type"] == "RuntimeDefault"  # podman's default profile
        args = [f"--group-add={pod['fsGroup']}"] if "fsGroup" in pod else []
        if own.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if own.get("capabilities", {}).get("drop") == ["ALL"]:
            args.append("--cap-drop=all")
        if own.get("allowPrivilegeEscalation") is False:
            args.append("--security-opt=no-new-privileges")
        return args

    def volumes(self, spec: Spec, pod_name: str) -> list[str]:
        volumes = {v["name"]: v for v in spec.pod.get("volumes", [])}
        fs_group = spec.pod.get("securityContext", {}).get("fsGroup", 0)
        args = []
        for mount in spec.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                size = _mebibytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
                args.append(f"--tmpfs={mount['mountPath']}:rw,size={size}m,mode=1777")
            elif "secret" in volume:
                folder = self.scratch / "secrets" / pod_name / mount["name"]
                self._secret_files(volume["secret"], folder, fs_group)
                args.append(f"--volume={folder}:{mount['mountPath']}:ro")
            else:
                raise AssertionError(f"a volume this harness does not know: {volume}")
        return args

    def _secret_files(self, secret: Obj, folder: Path, fs_group: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        for item in secret["items"]:
            path = folder / item["path"]
            path.write_text(self.secrets[(secret["secretName"], item["key"])])
            os.chown(path, 0, fs_group)
            path.chmod(secret.get("defaultMode", 0o644))

    def start(self, spec: Spec, pod_name: str, env: Mapping[str, str]) -> Container:
        log = self.scratch / f"{pod_name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.argv(spec, pod_name, env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        container = Container(f"{pod_name}-{os.getpid()}", process, log)
        self.started.append(container)
        return container

    def run(self, spec: Spec, pod_name: str, env: Mapping[str, str], timeout: float) -> tuple[int, str]:
        """Run a container to its end: its exit code and what it printed."""
        container = self.start(spec, pod_name, env)
        try:
            return container.process.wait(timeout), container.output()
        finally:
            container.kill()

    def cleanup(self) -> None:
        for container in self.started:
            container.kill()


def run_once(
    image: str, *args: str, entrypoint: list[str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A one-off container of the image, locked down as the chart's are (read-only root, a tmpfs /tmp, no
    capabilities, no privilege escalation), without a network."""
    argv = [
        *PODMAN,
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        *RUN_LIMITS,
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,size=64m,mode=1777",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
    ]
    if entrypoint is not None:
        argv.append(f"--entrypoint={json.dumps(entrypoint)}")
    return subprocess.run([*argv, image, *args], capture_output=True, text=True, timeout=timeout, check=False)
