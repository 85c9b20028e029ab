"""The OpenAPI document's enums and limits are the rules the code enforces (``squall.core.rules`` and the
settings), so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from squall.core import rules
from squall.core.settings import load_settings
from squall.gateway.openapi import openapi_spec

MAX_RID = 77  # not the default: the document must follow the setting


def spec() -> dict[str, Any]:
    return openapi_spec(["mul", "sum"], MAX_RID)


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = spec()["components"]["schemas"][name]
    return found


def parameter(path: str, name: str) -> dict[str, Any]:
    params = spec()["paths"][path]["get"]["parameters"]
    found: dict[str, Any] = next(p for p in params if p["name"] == name)["schema"]
    return found


def test_states_kinds_and_modes_are_the_rules() -> None:
    task = schema("Task")["properties"]
    assert task["state"]["enum"] == list(rules.TASK_STATES)
    assert task["kind"]["enum"] == list(rules.TASK_KINDS)
    assert parameter("/v1/tasks", "state")["enum"] == list(rules.TASK_STATES)
    assert parameter("/v1/tasks", "kind")["enum"] == list(rules.TASK_KINDS)
    item = schema("RequestStatus")["properties"]["items"]["items"]["properties"]
    assert item["state"]["enum"] == list(rules.ITEM_STATES)
    assert schema("Processing")["properties"]["mode"]["enum"] == list(rules.PROCESSING_MODES)
    dependency = schema("Dependency")["properties"]
    assert dependency["kind"]["enum"] == list(rules.DEPENDENCY_KINDS)
    assert dependency["state"]["enum"] == list(rules.DEPENDENCY_STATES)
    assert schema("Schedule")["properties"]["misfire_policy"]["enum"] == list(rules.MISFIRE_POLICIES)


def test_error_codes_are_the_rules() -> None:
    assert schema("ErrorDetail")["properties"]["code"]["enum"] == list(rules.ERROR_CODES)


def test_limits_are_the_rules_and_the_settings() -> None:
    rid = schema("Submission")["properties"]["rid"]["oneOf"]
    text = next(r for r in rid if r.get("type") == "string")
    assert text["maxLength"] == MAX_RID
    assert text["pattern"] == f"^{rules.RID_PATTERN_TEXT}$"
    assert parameter("/v1/tasks", "limit")["maximum"] == rules.MAX_TASK_PAGE
    assert parameter("/v1/tasks", "processing")["maxLength"] == rules.NAME_MAX_LENGTH
    assert str(rules.MAX_JSON_DEPTH) in spec()["paths"]["/v1/requests"]["post"]["description"]
    # The gateway serves the document with its own setting.
    assert load_settings(gateway={"max_rid_length": 40}).gateway.max_rid_length == 40
