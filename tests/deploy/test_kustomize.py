"""The kustomize trees: what each overlay and component adds, and the chart's equivalence with the base."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    KUBE_VERSIONS,
    KUSTOMIZE,
    Obj,
    built_kustomization,
    by_kind,
    component,
    env_value,
    kustomize_build,
    named,
    pod_template,
    render_chart,
    validate_schema,
)

SQUALL_COMPONENTS = ("gateway", "processor", "scheduler")


def test_base_is_namespace_agnostic_and_complete() -> None:
    objects = built_kustomization("base")
    assert all("namespace" not in o["metadata"] for o in objects)
    kinds = {(o["kind"], o["metadata"].get("labels", {}).get("app.kubernetes.io/component")) for o in objects}
    for name in SQUALL_COMPONENTS:
        for kind in ("ServiceAccount", "Deployment", "PodDisruptionBudget", "NetworkPolicy"):
            assert (kind, name) in kinds, (kind, name)
    assert ("Service", "gateway") in kinds and ("Ingress", "gateway") in kinds
    assert component(objects, "Deployment", "scheduler")["spec"]["replicas"] == 2
    for name in SQUALL_COMPONENTS:
        pod = pod_template(component(objects, "Deployment", name))["spec"]
        assert [c["args"] for c in pod["initContainers"]] == [["migrate"]]
        assert pod["containers"][0]["args"] == [name]
        assert (
            pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"]
            == name
        )


def test_dev_overlay_runs_nats_and_postgresql_in_the_namespace() -> None:
    objects = built_kustomization("overlays/dev")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"squall-dev"}
    nats = named(objects, "StatefulSet", "nats")
    postgresql = named(objects, "StatefulSet", "postgresql")
    assert "--jetstream" in nats["spec"]["template"]["spec"]["containers"][0]["args"]
    assert nats["spec"]["replicas"] == postgresql["spec"]["replicas"] == 1
    gateway = pod_template(component(objects, "Deployment", "gateway"))["spec"]["containers"][0]
    nats_service = named(objects, "Service", "nats")
    pg_service = named(objects, "Service", "postgresql")
    assert env_value(objects, gateway, "SQUALL_NATS_URL") == f"nats://{nats_service['metadata']['name']}:4222"
    assert f"@{pg_service['metadata']['name']}:5432/" in (
        env_value(objects, gateway, "SQUALL_DATABASE_URL") or ""
    )
    # PostgreSQL's password and Squall's are the same user-provided Secret.
    pg_env = {
        e["name"]: e.get("value") for e in postgresql["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert pg_env["POSTGRES_PASSWORD_FILE"] == env_value(objects, gateway, "SQUALL_DATABASE_PASSWORD_FILE")
    for name in SQUALL_COMPONENTS:
        deployment = component(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        requests = pod_template(deployment)["spec"]["containers"][0]["resources"]["requests"]
        assert requests == {"cpu": "20m", "memory": "96Mi"}


def test_prod_overlay_uses_external_services_monitoring_and_autoscaling() -> None:
    objects = built_kustomization("overlays/prod")
    assert {o["metadata"].get("namespace") for o in objects} == {"squall"}
    assert {"PodMonitor", "PrometheusRule", "ScaledObject"} <= {o["kind"] for o in objects}
    assert not [o for o in objects if o["kind"] == "StatefulSet"], "NATS and PostgreSQL are external"
    gateway = component(objects, "Deployment", "gateway")
    assert gateway["spec"]["replicas"] == 3
    assert "replicas" not in component(objects, "Deployment", "processor")["spec"], (
        "KEDA owns processor replicas"
    )
    container = pod_template(gateway)["spec"]["containers"][0]
    assert (
        env_value(objects, container, "SQUALL_NATS__CREDENTIALS_FILE")
        == "/var/run/secrets/squall/nats/nats.creds"
    )
    assert env_value(objects, container, "SQUALL_NATS__STREAM_REPLICAS") == "3"
    for name in SQUALL_COMPONENTS:
        pod = pod_template(component(objects, "Deployment", name))["spec"]
        for c in [*pod["initContainers"], *pod["containers"]]:
            assert "/var/run/secrets/squall/nats" in {m["mountPath"] for m in c["volumeMounts"]}, (
                name,
                c["name"],
            )
    ingress = by_kind(objects, "Ingress")[0]
    assert (
        ingress["spec"]["ingressClassName"]
        and ingress["spec"]["tls"][0]["secretName"] == "squall-gateway-tls"
    )
    dashboards = named(objects, "ConfigMap", "squall-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    scaled = by_kind(objects, "ScaledObject")[0]
    assert {t["metadata"]["natsServerMonitoringEndpoint"] for t in scaled["spec"]["triggers"]} == {
        "nats.nats.svc.cluster.local:8222"
    }


def _overlay(tmp_path: Path, components: list[str]) -> Path:
    """A throwaway overlay of the base with the given components, as a user would write one."""
    here = tmp_path / "overlay"
    here.mkdir()
    base = os.path.relpath(KUSTOMIZE / "base", here)
    listed = "".join(f"  - {os.path.relpath(KUSTOMIZE / 'components' / c, here)}\n" for c in components)
    (here / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {base}\n"
        f"components:\n{listed}"
    )
    return here


def test_hpa_component_for_clusters_without_keda(tmp_path: Path) -> None:
    objects = kustomize_build(_overlay(tmp_path, ["autoscaling-hpa"]))
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == component(objects, "Deployment", "processor")["metadata"]["name"]
    )
    assert "replicas" not in component(objects, "Deployment", "processor")["spec"]
    for version in KUBE_VERSIONS:
        for obj in objects:
            validate_schema(obj, version)


# --- the chart and the base describe the same workloads ---------------------------------------------


def _workload_shape(objects: list[Obj] | tuple[Obj, ...], name: str) -> dict[str, Any]:
    """What must agree between the chart and the base, with names that differ by construction left out."""
    deployment = component(objects, "Deployment", name)
    pod = pod_template(deployment)["spec"]

    def container_shape(c: Obj) -> dict[str, Any]:
        config_keys: set[str] = set()
        for source in c.get("envFrom", []):
            config_keys |= set(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        image = c["image"]
        return {
            "name": c["name"],
            "image": image,
            "command": c.get("command"),
            "args": c.get("args"),
            "env": sorted(json.dumps(e, sort_keys=True) for e in c.get("env", [])),
            "config": sorted(config_keys),
            "ports": c.get("ports"),
            "probes": [c.get(p) for p in ("startupProbe", "readinessProbe", "livenessProbe")],
            "securityContext": c.get("securityContext"),
            "resources": c.get("resources"),
            "volumeMounts": sorted((m["name"], m["mountPath"]) for m in c.get("volumeMounts", [])),
        }

    return {
        "replicas": deployment["spec"].get("replicas"),
        "strategy": deployment["spec"].get("strategy"),
        "selector": deployment["spec"]["selector"],
        "securityContext": pod.get("securityContext"),
        "terminationGracePeriodSeconds": pod.get("terminationGracePeriodSeconds"),
        "serviceAccountName": pod.get("serviceAccountName"),
        "automountServiceAccountToken": pod.get("automountServiceAccountToken"),
        "topologySpreadConstraints": pod.get("topologySpreadConstraints"),
        "volumes": sorted(json.dumps(v, sort_keys=True) for v in pod.get("volumes", [])),
        "initContainers": [container_shape(c) for c in pod.get("initContainers", [])],
        "containers": [container_shape(c) for c in pod["containers"]],
    }


@pytest.mark.parametrize("name", SQUALL_COMPONENTS)
def test_chart_and_kustomize_base_run_the_same_workloads(name: str) -> None:
    chart = render_chart({"ingress": {"enabled": True}, "tests": {"enabled": False}})
    base = built_kustomization("base")
    assert _workload_shape(chart, name) == _workload_shape(base, name)


def test_chart_and_kustomize_base_share_settings_services_and_policies() -> None:
    chart = render_chart({"ingress": {"enabled": True}, "tests": {"enabled": False}})
    base = built_kustomization("base")
    assert named(chart, "ConfigMap", "squall-config")["data"] == by_kind(base, "ConfigMap")[0]["data"]
    for kind in ("Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"):
        for obj in by_kind(base, kind):
            label = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            twin = component(chart, kind, label)
            if kind == "NetworkPolicy" and label == "gateway":
                # The chart also admits its `helm test` pod; the base has no test pod.
                twin_spec = dict(twin["spec"])
                twin_spec["ingress"] = [
                    {**rule, "from": [p for p in rule["from"] if "podSelector" not in p]}
                    for rule in twin_spec["ingress"]
                ]
                assert twin_spec == obj["spec"]
            else:
                assert twin["spec"] == obj["spec"], (kind, label)


def test_the_comparison_notices_a_difference() -> None:
    chart = render_chart({"processor": {"shutdownGraceSeconds": 21}})
    assert _workload_shape(chart, "processor") != _workload_shape(built_kustomization("base"), "processor")


def test_prod_overlay_runs_postgresql_with_synchronous_replication_and_connects_to_its_primary() -> None:
    """A 202 is given only for what a standby has too, and Squall follows the primary through the
    operator's read-write Service."""
    objects = built_kustomization("overlays/prod")
    cluster = named(objects, "Cluster", "squall-db")
    assert cluster["spec"]["instances"] == 3
    assert cluster["spec"]["postgresql"]["synchronous"] == {
        "method": "any",
        "number": 1,
        "dataDurability": "required",
    }
    assert cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"] == "squall-database"
    url = next(c for c in by_kind(objects, "ConfigMap") if "SQUALL_DATABASE_URL" in c.get("data", {}))
    assert url["data"]["SQUALL_DATABASE_URL"] == "postgresql://squall@squall-db-rw:5432/squall"
