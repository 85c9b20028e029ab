"""The k6 scripts of loadtest/k6: each one's options and thresholds are valid, and the smoke script passes
against a running system (gateway, processor, scheduler on real NATS and PostgreSQL, bearer tokens
required) and makes k6 exit non-zero when its submissions are refused or its token is missing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bench.k6run import k6_binary

from squall.gateway import auth
from tests.integration.harness import ROOT, System, make_settings

K6_DIR = ROOT / "loadtest" / "k6"
SCRIPTS = sorted(K6_DIR.glob("*.js"))
PROFILES = {"smoke", "average", "stress", "spike", "soak"}
THRESHOLDS_CROSSED = 99  # k6's exit code when a threshold fails
SCRIPT_EXCEPTION = 107  # k6's exit code when the script throws (here: the health gate in setup)
K6_TIMEOUT_SECONDS = 60
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")  # never route loopback through a proxy


def test_every_profile_has_a_script() -> None:
    assert {script.stem for script in SCRIPTS} == PROFILES


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_script_options_and_thresholds_are_valid(script: Path) -> None:
    # --execution-requirements makes k6 parse the thresholds and validate the scenarios, not only the JS.
    done = subprocess.run(
        [k6_binary(), "inspect", "--execution-requirements", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env=k6_env({}),
    )
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout)
    assert set(options["scenarios"]) == {"clients", "stats"}
    for metric in ("http_req_failed", "http_req_duration", "squall_e2e_duration", "squall_backlog_drained"):
        assert options["thresholds"][metric], metric
    assert any(t.startswith("p(99)<") for t in options["thresholds"]["http_req_duration"])


def k6_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SQUALL_", "K6_")) and k.lower() not in PROXY_VARIABLES
    }
    return {**env, "K6_NO_USAGE_REPORT": "true", **extra}


async def run_smoke(base_url: str, token: str | None, summary: Path) -> tuple[int, str, str]:
    """k6 runs the smoke script for 4 s, in a subprocess awaited so that this loop keeps serving."""
    env = {
        "SQUALL_URL": base_url,
        "SQUALL_DURATION": "4s",
        "SQUALL_DRAIN_TIMEOUT": "20",
        "SQUALL_SUMMARY": str(summary),
    }
    if token is not None:
        env["SQUALL_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        k6_binary(),
        *("run", "--quiet", "--no-color", "--address", "", str(K6_DIR / "smoke.js")),
        env=k6_env(env),
        cwd=summary.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), K6_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tokens file with a load-test token (submit, read) and a read-only one."""
    issued = {"loadtest": auth.new_token(), "reader": auth.new_token()}
    scopes = {"loadtest": ["submit", "read"], "reader": ["read"]}
    path = tmp_path / "tokens.json"
    path.write_text(
        json.dumps(
            [{"name": n, "scopes": scopes[n], "sha256": auth.token_digest(t)} for n, t in issued.items()]
        )
    )
    return path, issued


async def start_secured(nats_url: str, database_url: str, tokens_file: Path, system_factory: Any) -> System:
    settings = make_settings(nats_url, database_url, auth={"required": True, "tokens_file": str(tokens_file)})
    system: System = await system_factory(settings)
    await system.start_scheduler()  # sum and mul are batch processings: polling tasks finish them
    return system


def thresholds(summary: dict[str, Any]) -> dict[str, bool]:
    return {
        f"{name} {expression}": result["ok"]
        for name, metric in summary["metrics"].items()
        for expression, result in metric.get("thresholds", {}).items()
    }


async def test_smoke_script_passes_against_a_running_system(
    nats_url: str, database_url: str, system_factory: Any, tokens: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    tokens_file, issued = tokens
    system = await start_secured(nats_url, database_url, tokens_file, system_factory)
    summary_path = tmp_path / "smoke.json"

    code, out, err = await run_smoke(system.base_url, issued["loadtest"], summary_path)

    assert code == 0, f"{out}\n{err}"
    assert "result: every threshold held" in out
    summary = json.loads(summary_path.read_text())
    assert all(thresholds(summary).values())
    metrics = summary["metrics"]
    accepted = metrics["squall_requests_accepted"]["values"]["count"]
    followed = metrics["squall_processed_in_time"]["values"]
    # Every accepted request was followed to "processed" (smoke follows all of them) and drained.
    assert accepted > 0 and followed["passes"] == accepted and followed["fails"] == 0
    assert metrics["squall_backlog_drained"]["values"]["passes"] == 1
    assert metrics["http_req_failed"]["values"]["passes"] == 0  # "passes" of http_req_failed are failures
    assert metrics["squall_e2e_duration"]["values"]["p(95)"] > 0
    # Both contracts were exercised, results checked, and the database agrees with k6's count.
    checks = {c["name"]: c for c in summary["root_group"]["checks"]}
    for name in (
        "POST /v1/requests is 202",
        "POST /number_request is 201",
        "GET /number_request is 201",
        "GET /v1/stats has request totals",
        "processed request has the right results",
    ):
        assert checks[name]["passes"] > 0 and checks[name]["fails"] == 0, name
    assert await system.fetchval("SELECT count(*) FROM requests WHERE processed") == accepted


async def test_smoke_script_fails_when_submissions_are_refused(
    nats_url: str, database_url: str, system_factory: Any, tokens: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    tokens_file, issued = tokens
    system = await start_secured(nats_url, database_url, tokens_file, system_factory)

    # A token without the submit scope: the health gate passes, every submission answers 403.
    summary_path = tmp_path / "refused.json"
    code, out, err = await run_smoke(system.base_url, issued["reader"], summary_path)
    assert code == THRESHOLDS_CROSSED, f"{out}\n{err}"
    assert "threshold(s) CROSSED" in out
    crossed = {name for name, ok in thresholds(json.loads(summary_path.read_text())).items() if not ok}
    assert {"http_req_failed rate==0", "checks rate==1", "squall_requests_accepted count>0"} <= crossed
    assert await system.fetchval("SELECT count(*) FROM requests") == 0

    # No token at all: the health gate in setup() stops the run at once and says what to set.
    code, out, err = await run_smoke(system.base_url, None, tmp_path / "no-token.json")
    assert code == SCRIPT_EXCEPTION, f"{out}\n{err}"
    assert "answered 401" in err and "SQUALL_TOKEN" in err
