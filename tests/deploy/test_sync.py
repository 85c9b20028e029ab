"""deploy/sync.py keeps the chart's and the kustomize component's copies of the monitoring files in sync."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.deploy.manifests import ROOT

SYNC = ROOT / "deploy" / "sync.py"


def test_copies_are_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(SYNC), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _sync_module(root: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """deploy/sync.py pointed at a scratch tree."""
    spec = importlib.util.spec_from_file_location("squall_deploy_sync", SYNC)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", root)
    monkeypatch.setattr(module, "DASHBOARDS", root / "deploy" / "grafana")
    monkeypatch.setattr(module, "RULES", root / "deploy" / "prometheus" / "squall-rules.yaml")
    monkeypatch.setattr(module, "CHART_DASHBOARDS", root / "chart" / "dashboards")
    monkeypatch.setattr(module, "CHART_RULES", root / "chart" / "rules" / "squall-rules.yaml")
    component = root / "component"
    monkeypatch.setattr(module, "COMPONENT_DASHBOARDS", component / "dashboards")
    monkeypatch.setattr(module, "COMPONENT_RULE", component / "prometheusrule.yaml")
    monkeypatch.setattr(module, "COMPONENT_KUSTOMIZATION", component / "kustomization.yaml")
    monkeypatch.setattr(module, "CHART_YAML", root / "chart" / "Chart.yaml")
    monkeypatch.setattr(module, "KUSTOMIZE", root / "k8s")
    monkeypatch.setattr(module, "CHART_CI_VALUES", root / "chart" / "ci")
    monkeypatch.setattr(module, "DEPLOY_DOC", root / "deploy.md")
    (root / "chart").mkdir(exist_ok=True)
    shutil.copy(ROOT / "charts" / "squall" / "Chart.yaml", root / "chart" / "Chart.yaml")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return module


def test_check_notices_changed_added_and_removed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "deploy" / "grafana").mkdir(parents=True)
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    sync = _sync_module(tmp_path, monkeypatch)
    # Nothing canonical yet: nothing to copy, and the component still lists its PodMonitor.
    sync.sync()
    assert sync.differences() == []
    assert yaml.safe_load((tmp_path / "component" / "kustomization.yaml").read_text())["resources"] == [
        "podmonitor.yaml"
    ]
    rules = tmp_path / "deploy" / "prometheus" / "squall-rules.yaml"
    rules.write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          up == 0\n"
    )
    (tmp_path / "deploy" / "grafana" / "a.json").write_text('{"title": "A"}\n')
    assert len(sync.differences()) == 5  # two dashboard copies, two rule copies, the kustomization
    sync.sync()
    assert sync.differences() == []
    wrapped = yaml.safe_load((tmp_path / "component" / "prometheusrule.yaml").read_text())
    assert (
        wrapped["kind"] == "PrometheusRule"
        and wrapped["spec"]["groups"] == yaml.safe_load(rules.read_text())["groups"]
    )
    kustomization = yaml.safe_load((tmp_path / "component" / "kustomization.yaml").read_text())
    assert kustomization["configMapGenerator"][0]["files"] == ["dashboards/a.json"]
    assert kustomization["configMapGenerator"][0]["options"]["labels"]["grafana_dashboard"] == "1"
    rules.write_text(rules.read_text().replace("up == 0", "up == 1"))
    assert {line.split(":")[0] for line in sync.differences()} == {
        "chart/rules/squall-rules.yaml",
        "component/prometheusrule.yaml",
    }
    (tmp_path / "deploy" / "grafana" / "a.json").unlink()
    assert "chart/dashboards/a.json: left over (its canonical file is gone)" in sync.differences()
    sync.sync()
    assert sync.differences() == []
    assert not (tmp_path / "chart" / "dashboards" / "a.json").exists()


def test_the_version_is_written_from_pyproject_wherever_a_manifest_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "k8s" / "base").mkdir(parents=True)
    (tmp_path / "k8s" / "dev").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "k8s" / "base" / "gateway-deployment.yaml", tmp_path / "k8s" / "base")
    shutil.copy(ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml", tmp_path / "k8s" / "base")
    shutil.copy(
        ROOT / "deploy" / "k8s" / "overlays" / "dev" / "nats-statefulset.yaml", tmp_path / "k8s" / "dev"
    )
    sync = _sync_module(tmp_path, monkeypatch)
    sync.sync()
    assert sync.differences() == []
    pyproject = tmp_path / "pyproject.toml"
    old = sync.version()
    pyproject.write_text(pyproject.read_text().replace(f'version = "{old}"', 'version = "9.8.7"', 1))
    assert {line.split(":")[0] for line in sync.differences()} == {
        "chart/Chart.yaml",
        "k8s/base/gateway-deployment.yaml",
        "k8s/base/kustomization.yaml",
    }
    sync.sync()
    assert sync.differences() == []
    chart = yaml.safe_load((tmp_path / "chart" / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("9.8.7", "9.8.7")
    deployment = yaml.safe_load((tmp_path / "k8s" / "base" / "gateway-deployment.yaml").read_text())
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "9.8.7"
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/version"] == "9.8.7"
    assert {c["image"] for c in template["spec"]["containers"] + template["spec"]["initContainers"]} == {
        "squall:9.8.7"
    }
    kustomization = yaml.safe_load((tmp_path / "k8s" / "base" / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "squall", "newTag": "9.8.7"}]
    nats = yaml.safe_load((tmp_path / "k8s" / "dev" / "nats-statefulset.yaml").read_text())
    assert nats["metadata"]["labels"]["app.kubernetes.io/version"] != "9.8.7", "NATS keeps its own version"
