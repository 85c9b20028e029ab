"""The OpenAPI document and the handlers agree: every route is described, every description is routed."""

from __future__ import annotations

import re

import tornado.web

from squall.core.http import JsonHandler
from squall.gateway.app import GatewayApp
from tests.integration.harness import System

HTTP_METHODS = ("get", "post", "put", "patch", "delete")  # what OpenAPI calls operations


def _routes(app: GatewayApp) -> dict[str, set[str]]:
    """The application's routes as OpenAPI path templates, with the methods their handlers implement."""
    found: dict[str, set[str]] = {}
    for rule in app.wildcard_router.rules:
        handler = rule.target
        if not (isinstance(handler, type) and issubclass(handler, tornado.web.RequestHandler)):
            continue
        pattern = rule.matcher.regex.pattern.rstrip("$")  # type: ignore[attr-defined]
        template = getattr(handler, "route", None) or pattern
        assert "(" not in template, f"route {pattern} needs a `route` template"
        assert issubclass(handler, JsonHandler), f"route {template} answers something else than JSON"
        # The methods it serves: those its handler implements, or, for POST /v1/requests, serves elsewhere.
        found[template] = {m.lower() for m in handler.allowed_methods()}
    return found


async def test_spec_and_handlers_agree(system: System) -> None:
    spec = (await system.client.get("/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    documented = {path: set(ops) & set(HTTP_METHODS) for path, ops in spec["paths"].items()}
    assert documented == _routes(system.app)


async def test_every_route_template_matches_its_pattern(system: System) -> None:
    for rule in system.app.wildcard_router.rules:
        template = getattr(rule.target, "route", None)
        if template:
            example = re.sub(r"\{[^}]+\}", "x", template)
            assert rule.matcher.regex.match(example), (template, rule.matcher.regex.pattern)  # type: ignore[attr-defined]


async def test_spec_lists_the_registered_processings(system: System) -> None:
    spec = (await system.client.get("/v1/openapi.json")).json()
    job = spec["components"]["schemas"]["Item"]["properties"]["job"]
    assert job["enum"] == sorted(system.registry)


async def test_error_responses_follow_the_error_schema(system: System) -> None:
    spec = (await system.client.get("/v1/openapi.json")).json()
    error_schema = spec["components"]["schemas"]["Error"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4") and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    assert error_schema["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert spec["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message", "field"]
