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
    return module


def test_check_notices_changed_added_and_removed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
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
