"""The Helm chart: lint, values schema, and what each optional part renders."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml
from deploy.sync import version

from squall.core import events
from squall.core.settings import RetentionSettings
from tests.deploy.manifests import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    ROOT,
    by_kind,
    ci_values,
    component,
    named,
    pod_template,
    render_chart,
    rendered_chart,
)


def test_ci_scenarios_cover_minimal_and_production() -> None:
    assert {"minimal-values.yaml", "production-values.yaml"} <= set(CI_VALUES)
    production = ci_values("production-values.yaml")
    assert production["monitoring"]["podMonitor"]["enabled"]
    assert production["processor"]["autoscaling"]["kind"] == "keda"
    assert production["ingress"]["tls"]["enabled"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", [None, *CI_VALUES])
def test_lint_is_clean_in_strict_mode(values_file: str | None, kube_version: str) -> None:
    report = helm.lint(CHART, ci_values(values_file), strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == []
    # Severity 1 is informational (the chart has no icon); warnings (2) and errors (3) fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_broken_chart(tmp_path: Any) -> None:
    """The lint above can fail: a template that does not parse is an error."""
    broken = tmp_path / "squall"
    helm.Chart.load(CHART).save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nothing.here | nope }}\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


@pytest.mark.parametrize(
    "values",
    [
        {"unknownKey": 1},
        {"gateway": {"replica": 3}},
        {"processor": {"autoscaling": {"kind": "vpa"}}},
        {"image": {"tag": "latest"}},
        {"gateway": {"replicas": "two"}},
        {"gateway": {"resources": {"limits": None}}},
        {"settings": {"extra": {"NOT_SQUALL": "x"}}},
        {"database": {"url": "mysql://db/squall"}},
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "bad-enum",
        "latest-tag",
        "wrong-type",
        "no-limits",
        "extra-prefix",
        "url",
    ],
)
def test_values_that_break_the_schema_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render_chart(values)


def test_every_value_is_in_the_schema_and_documented() -> None:
    """values.yaml and values.schema.json describe the same keys; each key has a comment above it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False or "properties" not in node, path
        for key, child in value.items():
            assert key in node.get("properties", {}), f"{path}{key} is not in values.schema.json"
            sub = node["properties"][key]
            if isinstance(child, dict) and "properties" in sub:
                walk(child, sub, f"{path}{key}.")

    walk(values, schema, "")
    # A key is documented by a "# --" comment right above it; everything nested under a documented key
    # (a default such as resources or a selector) is covered by it; a group without one needs it on
    # each of its keys.
    covered_below: int | None = None
    previous = ""
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = stripped or previous
            continue
        indent = len(line) - len(line.lstrip())
        if covered_below is not None and indent > covered_below:
            previous = stripped
            continue
        covered_below = None
        if previous.startswith("# --"):
            covered_below = indent
        elif not line.rstrip().endswith(":"):
            raise AssertionError(f"values.yaml line {number} is undocumented: {line}")
        previous = stripped


def test_processor_grace_comes_from_one_value() -> None:
    objects = render_chart({"processor": {"shutdownGraceSeconds": 90, "drainMarginSeconds": 20}})
    config = named(objects, "ConfigMap", "squall-config")["data"]
    assert config["SQUALL_PROCESSOR__SHUTDOWN_GRACE_SECONDS"] == "90"
    processor = pod_template(component(objects, "Deployment", "processor"))["spec"]
    assert processor["terminationGracePeriodSeconds"] == 110
    gateway = pod_template(
        component(render_chart({"gateway": {"shutdownDelaySeconds": 15}}), "Deployment", "gateway")
    )
    assert gateway["spec"]["terminationGracePeriodSeconds"] == 40


def test_optional_parts_are_off_by_default() -> None:
    kinds = {o["kind"] for o in rendered_chart(None)}
    assert not kinds & {
        "Ingress",
        "PodMonitor",
        "PrometheusRule",
        "ScaledObject",
        "HorizontalPodAutoscaler",
        "StatefulSet",
    }
    assert len(by_kind(rendered_chart(None), "ConfigMap")) == 1  # settings only, no dashboards


def test_keda_scales_processors_on_their_durable_consumers() -> None:
    objects = rendered_chart("production-values.yaml")
    scaled = named(objects, "ScaledObject", "squall-processor")
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == component(objects, "Deployment", "processor")["metadata"]["name"]
    )
    triggers = {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in scaled["spec"]["triggers"]}
    assert triggers == {
        (events.REQUESTS_STREAM, events.REQUESTS_CONSUMER),
        (events.TASKS_STREAM, events.TASKS_CONSUMER),
    }
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"nats-jetstream"}
    assert "replicas" not in component(objects, "Deployment", "processor")["spec"], (
        "the autoscaler owns replicas"
    )


def test_hpa_alternative() -> None:
    objects = rendered_chart("hpa-values.yaml")
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert not by_kind(objects, "ScaledObject")
    assert hpa["metadata"]["name"] == "tasks-processor"  # fullnameOverride


def test_monitoring_renders_the_canonical_rules_and_dashboards() -> None:
    objects = rendered_chart("production-values.yaml")
    canonical_rules = ROOT / "deploy" / "prometheus" / "squall-rules.yaml"
    rule = by_kind(objects, "PrometheusRule")[0]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load(canonical_rules.read_text())["groups"]
    dashboards = named(objects, "ConfigMap", "squall-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    canonical = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert canonical, "deploy/grafana has no dashboard"
    assert sorted(dashboards["data"]) == [p.name for p in canonical]
    for path in canonical:
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text())


def test_secrets_are_mounted_not_inlined() -> None:
    objects = rendered_chart("production-values.yaml")
    gateway = pod_template(component(objects, "Deployment", "gateway"))["spec"]
    container = gateway["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SQUALL_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "squall-database",
        "key": "url",
    }
    assert env["SQUALL_NATS__CREDENTIALS_FILE"]["value"] == "/var/run/secrets/squall/nats/nats.creds"
    assert env["SQUALL_AUTH__TOKENS_FILE"]["value"] == "/var/run/secrets/squall/auth/tokens.json"
    assert "SQUALL_DATABASE_PASSWORD_FILE" not in env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/run/secrets/squall/nats", "/var/run/secrets/squall/auth", "/tmp"} <= mounts
    config = named(objects, "ConfigMap", "squall-config")["data"]
    assert "SQUALL_DATABASE_URL" not in config
    processor = pod_template(component(objects, "Deployment", "processor"))["spec"]["containers"][0]
    assert "SQUALL_AUTH__TOKENS_FILE" not in {e["name"] for e in processor["env"]}, (
        "only the gateway reads tokens"
    )
    image = container["image"]
    assert image == "squall:" + version() + "@sha256:" + "0123456789abcdef" * 4


def test_helm_test_pod_submits_through_the_gateway_service() -> None:
    objects = rendered_chart("production-values.yaml")
    pod = by_kind(objects, "Pod")[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    service = component(objects, "Service", "gateway")
    assert (
        env["GATEWAY_URL"]["value"]
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    assert env["SQUALL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "squall-test-token"
    script = pod["spec"]["containers"][0]["args"][0]
    compile(script, "helm-test", "exec")  # the inline script is valid Python
    assert "/v1/requests" in script and "processed" in script
    # The gateway's NetworkPolicy lets the test pod in.
    policy = component(objects, "NetworkPolicy", "gateway")
    peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"] if "podSelector" in p]
    assert any(p["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items() for p in peers)


def test_in_cluster_nats_is_what_squall_connects_to() -> None:
    objects = rendered_chart("dev-values.yaml")
    nats = component(objects, "StatefulSet", "nats")
    service = named(objects, "Service", nats["metadata"]["name"])
    assert "--jetstream" in nats["spec"]["template"]["spec"]["containers"][0]["args"]
    assert nats["spec"]["replicas"] == 1
    assert not [a for a in nats["spec"]["template"]["spec"]["containers"][0]["args"] if "cluster" in a]
    config = named(objects, "ConfigMap", "squall-config")["data"]
    assert config["SQUALL_NATS_URL"] == f"nats://{service['metadata']['name']}:4222"


def test_in_cluster_nats_of_three_servers_is_one_jetstream_cluster() -> None:
    objects = rendered_chart("nats-cluster-values.yaml")
    nats = component(objects, "StatefulSet", "nats")
    name = nats["metadata"]["name"]
    headless = named(objects, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["spec"]["ports"]} >= {6222}
    assert (nats["spec"]["replicas"], nats["spec"]["podManagementPolicy"]) == (3, "Parallel")
    args = nats["spec"]["template"]["spec"]["containers"][0]["args"]
    routes = next(a for a in args if a.startswith("--routes=")).removeprefix("--routes=").split(",")
    # Every server's route names each pod by the headless Service's stable DNS name.
    assert routes == [f"nats://{name}-{i}.{headless['metadata']['name']}:6222" for i in range(3)]
    assert f"--cluster_name={name}" in args and "--cluster=nats://0.0.0.0:6222" in args
    assert named(objects, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1
    assert named(objects, "ConfigMap", "squall-config")["data"]["SQUALL_NATS__STREAM_REPLICAS"] == "3"


def test_more_stream_replicas_than_in_cluster_nats_servers_is_refused() -> None:
    with pytest.raises(Exception, match=r"cannot exceed nats\.inCluster\.replicas"):
        render_chart({"nats": {"streamReplicas": 3, "inCluster": {"enabled": True, "replicas": 1}}})


def test_long_release_names_are_truncated_to_63_characters() -> None:
    values = {"fullnameOverride": "x" * 63}
    objects = render_chart(values)
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    assert component(objects, "Deployment", "processor")["metadata"]["name"].endswith("-processor")


def test_the_original_scripts_port_and_answer() -> None:
    """`gateway.service.legacyPort` adds the original's port 8889 to the gateway Service, to the same
    container port; the POST answer setting reaches every container's settings."""
    default = render_chart(None)
    service = component(default, "Service", "gateway")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert (
        named(default, "ConfigMap", "squall-config")["data"]["SQUALL_GATEWAY__LEGACY_POST_ANSWER"]
        == "original"
    )
    objects = render_chart({"gateway": {"service": {"legacyPort": 8889}, "legacyPostAnswer": "object"}})
    ports = {p["name"]: p for p in component(objects, "Service", "gateway")["spec"]["ports"]}
    assert ports["legacy"] == {"name": "legacy", "port": 8889, "targetPort": "http", "protocol": "TCP"}
    assert ports["http"]["port"] == 8888
    assert (
        named(objects, "ConfigMap", "squall-config")["data"]["SQUALL_GATEWAY__LEGACY_POST_ANSWER"] == "object"
    )
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema({"gateway": {"legacyPostAnswer": "twice"}})


def test_retention_values_default_to_squall_s_own_and_reach_every_container() -> None:
    """`retention.*` are first-class values: their defaults are the settings' own defaults, a changed one
    reaches the settings ConfigMap, and the schema refuses a negative period."""
    defaults = RetentionSettings()
    data = named(render_chart(None), "ConfigMap", "squall-config")["data"]
    assert {
        key: float(data[f"SQUALL_RETENTION__{key.upper()}"])
        for key in ("finished_seconds", "dead_seconds", "interval_seconds", "batch_size")
    } == {
        "finished_seconds": defaults.finished_seconds,
        "dead_seconds": defaults.dead_seconds,
        "interval_seconds": defaults.interval_seconds,
        "batch_size": defaults.batch_size,
    }
    changed = named(render_chart({"retention": {"finishedSeconds": 3600}}), "ConfigMap", "squall-config")
    assert changed["data"]["SQUALL_RETENTION__FINISHED_SECONDS"] == "3600"
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema({"retention": {"deadSeconds": -1}})
