"""schemathesis against /v1/openapi.json: no 5xx, and every answer conforms to the document.

A fixed seed and a fixed number of examples per operation make the run reproducible. The check
``positive_data_acceptance`` is left out: some rules cannot be written in JSON Schema (a cron expression
that parses, a time zone that exists, a dependency that was created before it is named, ``jobtodo`` as long
as ``numbers``), so schema-valid input may rightly get a 422.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.integration.harness import System

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "allow_header_conformance",
    )
)


@pytest.mark.slow
async def test_api_against_its_openapi_document(system: System, tmp_path: Path) -> None:
    await system.start_scheduler()
    schemathesis = Path(sys.executable).parent / "schemathesis"
    process = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "run",
        f"{system.base_url}/v1/openapi.json",
        "--checks",
        CHECKS,
        "--seed",
        "20261125",
        "--max-examples",
        "25",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--no-color",
        # Every path: schemathesis leaves out the operation serving the document (GET /v1/openapi.json)
        # unless a filter names it, and that one is part of the API too.
        "--include-path-regex",
        "^/",
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    # Every operation of the document was selected and tested, and passed both phases that generate cases.
    served = len(await served_operations(system))
    assert served > 0
    assert _counts(r"Operations:\s+(\d+) selected / (\d+) total", text) == (served, served)
    assert _counts(r"Selected: (\d+)/(\d+)", text) == (served, served)
    assert _counts(r"Tested: (\d+)", text) == (served,)
    for phase in ("Coverage", "Fuzzing"):
        assert _counts(rf"{phase} \(in [^)]*\)\s*\n\s*\n\s*✅ (\d+) passed *\n", text) == (served,), phase


HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def served_operations(system: System) -> list[tuple[str, str]]:
    """The (method, path) pairs of the OpenAPI document the gateway serves."""
    response = await system.client.get("/v1/openapi.json")
    assert response.status_code == 200, response.text
    paths: dict[str, dict[str, object]] = response.json()["paths"]
    return [(method, path) for path, item in paths.items() for method in item if method in HTTP_METHODS]


def _counts(pattern: str, text: str) -> tuple[int, ...]:
    """The numbers ``pattern``'s groups capture in schemathesis's output (the only match)."""
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, text[-6000:])
    groups = found[0] if isinstance(found[0], tuple) else (found[0],)
    return tuple(int(g) for g in groups)
