"""The Grafana dashboards: the structure Grafana's dashboard schema requires (mirrored here: the tests
cannot read the schema's copy), a title and a unit on every panel, a datasource variable, PromQL that
promtool parses, and recorded series that the rule file defines. Whether every raw metric is one the
services export is checked against a running system in tests/integration/test_dashboard_metrics.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.observability import (
    DASHBOARDS,
    as_promql,
    dashboard_queries,
    load_dashboard,
    metric_names,
    panels,
    promtool,
    recording_rules,
)

# Keys Grafana's dashboard schema allows (it forbids any other: additionalProperties is false).
DASHBOARD_KEYS = {
    "id", "uid", "title", "description", "revision", "gnetId", "tags", "timezone", "editable",
    "graphTooltip", "time", "timepicker", "fiscalYearStartMonth", "liveNow", "weekStart", "refresh",
    "schemaVersion", "version", "panels", "templating", "annotations", "links", "snapshot",
}  # fmt: skip
PANEL_KEYS = {
    "type", "id", "pluginVersion", "targets", "title", "description", "transparent", "datasource",
    "gridPos", "links", "repeat", "repeatDirection", "maxPerRow", "maxDataPoints", "transformations",
    "interval", "timeFrom", "timeShift", "hideTimeOverride", "timeCompare", "libraryPanel", "cacheTimeout",
    "queryCachingTTL", "options", "fieldConfig",
}  # fmt: skip
ROW_KEYS = {"type", "collapsed", "title", "datasource", "gridPos", "id", "panels", "repeat"}
VARIABLE_KEYS = {
    "type", "name", "label", "hide", "skipUrlSync", "description", "query", "datasource", "current",
    "multi", "allowCustomValue", "options", "refresh", "sort", "includeAll", "allValue", "regex",
    "staticOptions", "staticOptionsOrder", "auto", "auto_min", "auto_count", "definition",
}  # fmt: skip
VARIABLE_TYPES = {
    "query", "adhoc", "groupby", "constant", "datasource", "interval", "textbox", "custom", "system",
    "snapshot", "switch",
}  # fmt: skip
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(params=DASHBOARDS, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


def test_both_dashboards_exist() -> None:
    assert {path.name for path in DASHBOARDS} >= {"squall-overview.json", "squall-processing.json"}


def test_dashboard_structure_follows_the_schema(dashboard: dict[str, Any]) -> None:
    assert set(dashboard) <= DASHBOARD_KEYS, set(dashboard) - DASHBOARD_KEYS
    for key in ("schemaVersion", "templating", "annotations"):
        assert key in dashboard, f"required key {key} missing"
    assert isinstance(dashboard["schemaVersion"], int)
    assert 8 <= len(dashboard["uid"]) <= 40 and dashboard["title"]
    assert set(dashboard["time"]) == {"from", "to"}
    for annotation in dashboard["annotations"]["list"]:
        assert {"name", "enable", "iconColor"} <= set(annotation)
    for variable in dashboard["templating"]["list"]:
        assert set(variable) <= VARIABLE_KEYS, set(variable) - VARIABLE_KEYS
        assert variable["type"] in VARIABLE_TYPES and variable["name"]
        # The schema takes a query as a string or an object of objects; a string is what Grafana reads.
        assert isinstance(variable.get("query", ""), str)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            assert set(panel) <= ROW_KEYS and {"collapsed", "id", "panels"} <= set(panel), panel["title"]
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert set(panel) <= PANEL_KEYS, set(panel) - PANEL_KEYS
            assert {"defaults", "overrides"} <= set(panel["fieldConfig"]), panel["title"]
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid)
        assert grid["h"] > 0 and 0 < grid["w"] <= 24 and 0 <= grid["x"] < 24 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} runs off the grid"
        assert set(panel.get("datasource", {})) <= {"type", "uid"}


def test_every_panel_has_a_title_and_a_unit(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        if panel["type"] != "row":
            assert panel["fieldConfig"]["defaults"].get("unit", "").strip(), f"{panel['title']} has no unit"
            assert panel["targets"], f"{panel['title']} queries nothing"


def test_the_datasource_is_a_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["refId"] and target["expr"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE


def test_the_processing_dashboard_is_per_processing() -> None:
    dashboard = load_dashboard(next(p for p in DASHBOARDS if p.name == "squall-processing.json"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["processing"]["type"] == "query"
    assert variables["processing"]["query"].startswith("label_values(")
    targets = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    filtered = [expr for expr in targets if "$processing" in expr]
    assert len(filtered) >= len(targets) - 1, "panels of the drill-down should select $processing"


def test_every_recorded_series_queried_is_defined(dashboard: dict[str, Any]) -> None:
    recorded = {rule["record"] for rule in recording_rules()}
    queried = {name for query in dashboard_queries(dashboard) for name in metric_names(query)}
    assert {name for name in queried if ":" in name} <= recorded
    # The heavy queries go through recording rules: raw series only where they are cheap.
    assert len({name for name in queried if ":" in name}) >= len(queried) // 2


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule in a scratch rule file: promtool check rules parses its PromQL."""
    queries = [as_promql(q) for path in DASHBOARDS for q in dashboard_queries(load_dashboard(path))]
    rules = [{"record": f"dashboard:query_{index}:check", "expr": q} for index, q in enumerate(queries)]
    scratch = tmp_path / "dashboard-queries.yaml"
    scratch.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(scratch)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_metric_names_reads_promql() -> None:
    """The helper the metric checks rely on: names, not functions, labels, keywords or variables."""
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(squall_x_bucket{route=~"/v1/.*", a="b c"}'
        "[$__rate_interval]))) / on (route) group_left (code) squall:y:rate5m offset 5m"
        ' and max without (instance) (squall_z{processing="$processing"}) > 1e3'
    )
    assert metric_names(expr) == {"squall_x_bucket", "squall:y:rate5m", "squall_z"}
    assert metric_names("label_values(squall_w, processing)") == {"squall_w"}
    assert re.fullmatch(r"\w+", next(iter(metric_names("count(up) > bool 0"))))
