"""Every rendering (chart defaults, each ci/*-values.yaml, each kustomize tree) is valid and locked down."""

from __future__ import annotations

import re

import pytest

from tests.deploy.manifests import (
    KUBE_VERSIONS,
    RECOMMENDED_LABELS,
    RENDERING_IDS,
    ROOT,
    USER_SECRETS,
    WORKLOAD_KINDS,
    Obj,
    by_kind,
    component,
    containers,
    env_value,
    match_labels_selects,
    pod_template,
    pods,
    rendering,
    selects,
    validate_schema,
)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_every_object_is_valid_for_kubernetes(rendering_id: str, version: str) -> None:
    objects = rendering(rendering_id)
    assert objects
    for obj in objects:
        validate_schema(obj, version)


def test_the_validator_rejects_an_unknown_field() -> None:
    """The schema check above is strict: a misspelt field fails (so a pass means something)."""
    deployment = dict(component(rendering("kustomize:base"), "Deployment", "gateway"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(AssertionError, match="replica"):
        validate_schema(deployment, KUBE_VERSIONS[0])


def _workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_workloads_are_locked_down(rendering_id: str) -> None:
    for workload in _workloads(rendering(rendering_id)):
        pod = pod_template(workload)["spec"]
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert pod.get("automountServiceAccountToken") is False, where
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert isinstance(pod_security.get("runAsUser"), int) and pod_security["runAsUser"] > 0, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for container in containers(pod):
            name = f"{where} container {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            assert "add" not in security.get("capabilities", {}), name
            assert security.get("privileged") in (None, False), name
            seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound}"
            image = container["image"]
            assert re.fullmatch(r"[a-z0-9./_-]+(:[\w.-]+)(@sha256:[a-f0-9]{64})?", image), f"{name}: {image}"
            assert not image.split("@")[0].endswith(":latest"), f"{name}: {image}"


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_long_running_containers_have_probes_on_health_endpoints(rendering_id: str) -> None:
    for workload in _workloads(rendering(rendering_id)):
        if workload["kind"] in ("Pod", "Job"):
            continue
        for container in pod_template(workload)["spec"]["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{name}: no {probe}"
            labels = workload["metadata"]["labels"]
            if labels.get("app.kubernetes.io/component") in ("gateway", "processor", "scheduler"):
                assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
                named_ports = {p["name"] for p in container["ports"]}
                assert container["readinessProbe"]["httpGet"]["port"] in named_ports, name


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_recommended_labels_everywhere(rendering_id: str) -> None:
    objects = rendering(rendering_id)
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "Namespace":
            assert labels.get("app.kubernetes.io/part-of") == "squall", where
            continue
        missing = [label for label in RECOMMENDED_LABELS if not labels.get(label)]
        assert not missing, f"{where}: missing {missing}"
        if rendering_id.startswith("chart:"):
            assert re.fullmatch(r"squall-\d+\.\d+\.\d+.*", labels.get("helm.sh/chart", "")), where
            assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        else:
            assert labels["app.kubernetes.io/managed-by"] == "kustomize", where
    for pod in pods(objects):
        missing = [label for label in RECOMMENDED_LABELS if not pod["metadata"]["labels"].get(label)]
        assert not missing, f"pod of {pod['metadata'].get('name')}: missing {missing}"


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_selectors_services_and_ingress_are_wired(rendering_id: str) -> None:
    objects = rendering(rendering_id)
    pod_list = pods(objects)
    for workload in _workloads(objects):
        if workload["kind"] == "Pod":
            continue
        selector = workload["spec"]["selector"]
        labels = pod_template(workload)["metadata"]["labels"]
        assert match_labels_selects(selector, labels), workload["metadata"]["name"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"} <= set(
            selector["matchLabels"]
        ), workload["metadata"]["name"]
        assert "app.kubernetes.io/version" not in selector["matchLabels"], "selectors are immutable"
    services = by_kind(objects, "Service")
    for service in services:
        selected = [p for p in pod_list if selects(service["spec"]["selector"], p["metadata"]["labels"])]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        pod_ports = {
            port["name"]: port["containerPort"]
            for p in selected
            for c in p["spec"]["containers"]
            for port in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in pod_ports or target in pod_ports.values(), (service["metadata"]["name"], target)
    for ingress in by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = next(s for s in services if s["metadata"]["name"] == backend["name"])
                port_names = {p.get("name") for p in service["spec"]["ports"]}
                port_numbers = {p["port"] for p in service["spec"]["ports"]}
                assert (
                    backend["port"].get("name") in port_names or backend["port"].get("number") in port_numbers
                )
        for tls in ingress["spec"].get("tls", []):
            assert tls["secretName"] in USER_SECRETS
            assert set(tls["hosts"]) <= {rule.get("host") for rule in ingress["spec"]["rules"]}
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind(objects, kind):
            selector = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
            assert any(match_labels_selects(selector, p["metadata"]["labels"]) for p in pod_list), obj
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in by_kind(objects, kind):
            target = obj["spec"]["scaleTargetRef"]
            deployment = next(o for o in objects if o["kind"] == target["kind"] == "Deployment")
            assert any(
                o["kind"] == "Deployment" and o["metadata"]["name"] == target["name"] for o in objects
            ), target
            assert deployment is not None
    for monitor in by_kind(objects, "PodMonitor"):
        scraped = [
            p for p in pod_list if match_labels_selects(monitor["spec"]["selector"], p["metadata"]["labels"])
        ]
        components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in scraped}
        assert components == {"gateway", "processor", "scheduler"}, components
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in scraped:
                ports = {port["name"] for c in pod["spec"]["containers"] for port in c.get("ports", [])}
                assert endpoint["port"] in ports


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_config_and_secret_references_exist_or_are_user_provided(rendering_id: str) -> None:
    objects = rendering(rendering_id)
    config_maps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for secret in USER_SECRETS:
        assert f"`{secret}`" in docs, f"docs/deploy.md must tell users to create the Secret {secret}"
    for workload in _workloads(objects):
        spec = pod_template(workload)["spec"]
        claims = {c["metadata"]["name"] for c in workload.get("spec", {}).get("volumeClaimTemplates", [])}
        secret_refs, config_refs = set(), set()
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret_refs.add(volume["secret"]["secretName"])
            if "configMap" in volume:
                config_refs.add(volume["configMap"]["name"])
        for container in containers(spec):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    config_refs.add(source["configMapRef"]["name"])
                if "secretRef" in source:
                    secret_refs.add(source["secretRef"]["name"])
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret_refs.add(ref["secretKeyRef"]["name"])
                if "configMapKeyRef" in ref:
                    config_refs.add(ref["configMapKeyRef"]["name"])
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])} | claims, container["name"]
        assert config_refs <= config_maps, config_refs - config_maps
        assert secret_refs <= USER_SECRETS, secret_refs - USER_SECRETS


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_no_secret_values_anywhere(rendering_id: str) -> None:
    objects = rendering(rendering_id)
    for secret in by_kind(objects, "Secret"):
        assert not secret.get("data") and not secret.get("stringData"), secret["metadata"]["name"]
    for pod in pods(objects):
        for container in containers(pod["spec"]):
            for entry in container.get("env", []):
                assert not re.search(r"PASSWORD$|TOKEN$|SECRET", entry["name"]) or "value" not in entry, entry
    for config_map in by_kind(objects, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            if key.startswith("SQUALL_") and "URL" in key:
                # A URL in a ConfigMap never carries a password (user:password@host).
                assert not re.search(r"://[^/@]+:[^/@]*@", value), key


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_grace_periods_cover_the_drains(rendering_id: str) -> None:
    """SIGKILL comes after the processor's shutdown grace and after the gateway's readiness delay."""
    objects = rendering(rendering_id)
    processor = pod_template(component(objects, "Deployment", "processor"))["spec"]
    grace = env_value(objects, processor["containers"][0], "SQUALL_PROCESSOR__SHUTDOWN_GRACE_SECONDS")
    assert grace is not None
    assert processor["terminationGracePeriodSeconds"] >= float(grace) + 10
    gateway = pod_template(component(objects, "Deployment", "gateway"))["spec"]
    delay = env_value(objects, gateway["containers"][0], "SQUALL_GATEWAY__SHUTDOWN_DELAY_SECONDS")
    assert delay is not None
    assert gateway["terminationGracePeriodSeconds"] >= float(delay) + 10


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_a_rolling_update_starts_each_new_pod_before_an_old_one_stops(rendering_id: str) -> None:
    """The order tests/upgrade rehearses: a new release's pod (whose init container migrates) runs beside
    the old release's pods, which then stop one at a time."""
    for deployment in by_kind(rendering(rendering_id), "Deployment"):
        if deployment["metadata"]["labels"].get("app.kubernetes.io/name") != "squall":
            continue
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }, deployment["metadata"]["name"]


@pytest.mark.parametrize("rendering_id", RENDERING_IDS)
def test_network_policies_limit_egress_to_dns_nats_and_postgresql(rendering_id: str) -> None:
    objects = rendering(rendering_id)
    policies = by_kind(objects, "NetworkPolicy")
    if not policies:
        assert rendering_id in ("chart:minimal-values.yaml", "chart:hpa-values.yaml"), (
            "policies are on by default"
        )
        return
    for name in ("gateway", "processor", "scheduler"):
        policy = component(objects, "NetworkPolicy", name)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        ports = {
            (p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["egress"] for p in rule["ports"]
        }
        assert ports == {(53, "UDP"), (53, "TCP"), (4222, "TCP"), (5432, "TCP")}, (name, ports)
        sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        namespaces = [
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for p in sources
            if "namespaceSelector" in p
        ]
        if name == "gateway":
            assert "ingress-nginx" in namespaces
        else:
            assert namespaces == ["monitoring"], (name, namespaces)
