"""schemathesis against /v1/openapi.json: no 5xx, and every answer conforms to the document.

A fixed seed and a fixed number of examples per operation make the run reproducible. The check
``positive_data_acceptance`` is left out: some rules cannot be written in JSON Schema (a cron expression
that parses, a time zone that exists, a dependency that was created before it is named, ``jobtodo`` as long
as ``numbers``), so schema-valid input may rightly get a 422.
"""

from __future__ import annotations

import asyncio
import os
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
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "Tested: 23" in text or "Tested:" in text
