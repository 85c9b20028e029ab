"""What the observability tests share: the canonical rule file and dashboards, promtool, and the metric
names a PromQL expression reads."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "deploy" / "prometheus" / "squall-rules.yaml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool() -> str:
    """promtool from the virtual environment (where `tasks.py setup` puts it) or from PATH."""
    beside_python = Path(sys.executable).parent / "promtool"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("promtool")
    if found is None:
        raise AssertionError(
            "promtool is missing: `python3 tasks.py setup` installs it as root from Debian's prometheus "
            "package; otherwise put promtool (Prometheus 2.x) on PATH (see docs/runbook.md)"
        )
    return found


def load_rules() -> list[dict[str, Any]]:
    """Every rule of the rule file, recording and alerting, in order."""
    document = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "record" in rule]


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included (rows themselves too)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query if isinstance(query, str) else query["query"])
    return queries


# Grafana's variables, replaced by something PromQL parses.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def as_promql(query: str) -> str:
    """A dashboard query as plain PromQL: Grafana variables replaced, label_values(m, l) reduced to m."""
    label_values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*[a-zA-Z_]\w*\s*\)\s*", query)
    if label_values:
        query = label_values.group(1)
    for variable, value in _GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return re.sub(r"\$\{?(\w+)\}?", r"\1_value", query)


_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "atan2", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (metrics and recorded series)."""
    text = as_promql(expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or name in _AGGREGATIONS:
            continue
        names.add(name)
    return names


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }
