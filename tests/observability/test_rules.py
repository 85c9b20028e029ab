"""The Prometheus rule file: valid for promtool, every alert unit-tested both ways, every recording rule
tested, and every alert documented (annotations and a runbook section)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.observability.observability import (
    RULE_TESTS,
    RULES_FILE,
    alerts,
    promtool,
    recording_rules,
    runbook_anchors,
)


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=RULES_FILE.parent
    )


def alert_cases() -> list[dict[str, object]]:
    cases = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def expressions_under_test() -> list[str]:
    return [
        case["expr"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("promql_expr_test", [])
    ]


def test_promtool_accepts_the_rule_file() -> None:
    result = run_promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts()) + len(recording_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule tests in deploy/prometheus/tests"
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes promtool fail: the unit tests above do check something."""
    source = RULE_TESTS[0].read_text().replace("../squall-rules.yaml", str(RULES_FILE))
    broken = source.replace("severity: warning", "severity: page", 1)
    assert broken != source
    (tmp_path / "broken.yaml").write_text(broken)
    result = run_promtool("test", "rules", tmp_path / "broken.yaml")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = alert_cases()
    for alert in alerts():
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no test where it stays quiet"
    known = {alert["alert"] for alert in alerts()}
    assert {case["alertname"] for case in cases} <= known, "tests name an alert the rule file lacks"


def test_every_recording_rule_has_a_unit_test() -> None:
    expressions = expressions_under_test()
    for rule in recording_rules():
        pattern = re.compile(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])")
        assert any(pattern.search(expr) for expr in expressions), f"{rule['record']} is never tested"


def test_recording_rules_are_named_level_metric_operation() -> None:
    names = [rule["record"] for rule in recording_rules()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"squall:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name} has no {key}"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbook.md", f"{name}: runbook_url should point into docs/runbook.md"
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert anchor in anchors, f"docs/runbook.md has no section {name}"


def test_the_issue_s_alerts_are_all_there() -> None:
    """Backlog growing, failure ratio, dead letters, no leader, dependency down, 5xx, not consuming."""
    assert {alert["alert"] for alert in alerts()} >= {
        "SquallBacklogGrowing",
        "SquallFailureRatioHigh",
        "SquallDeadLetters",
        "SquallNoSchedulerLeader",
        "SquallDependencyDown",
        "SquallGatewayErrorRatioHigh",
        "SquallProcessorsNotConsuming",
        "SquallProcessingStalled",
    }
