"""The operator API: schedules, scheduler replicas, processings and dependencies."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from squall.core import checks, schedules
from squall.core.http import ApiError
from squall.core.rules import ErrorCode
from squall.core.store import dependencies, operations, scheduling
from squall.gateway import admin_models, validation
from squall.gateway.base import BaseHandler

M = TypeVar("M", bound=BaseModel)

_CODES: dict[str, ErrorCode] = {"missing": "missing_field", "extra_forbidden": "unknown_field"}


def _not_found(what: str, field: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with this name", field)


class AdminHandler(BaseHandler):
    scope = "admin"  # schedules, processings, dependencies and schedulers are the operators'

    def write_found(self, found: dict[str, Any] | None, what: str) -> None:
        """The named schedule, processing or dependency; 404 naming the path's ``name`` if there is none."""
        if found is None:
            raise _not_found(what, "name")
        self.write_json(found)

    def read_model(self, model: type[M]) -> M:
        """The JSON body as ``model``; 415/413/400/422 naming the field otherwise."""
        validation.check_json_content_type(self.request.headers.get("Content-Type"))
        if len(self.request.body) > 64 * 1024:
            raise ApiError(413, "body_too_large", "the body is larger than 65536 bytes", "body")
        doc = validation.parse_json(self.request.body)
        if not isinstance(doc, dict):
            raise ApiError(422, "invalid_type", "body must be a JSON object", "body")
        try:
            return model.model_validate(doc)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or None
            message = str(error["msg"]).removeprefix("Value error, ")
            code = _CODES.get(error["type"], "invalid_value")
            raise ApiError(422, code, f"{field}: {message}" if field else message, field) from None


# --- schedules -----------------------------------------------------------------------------------------


class SchedulesHandler(AdminHandler):
    route = "/v1/schedules"

    async def get(self) -> None:
        self.write_json({"schedules": await operations.list_schedules(self.app.engine)})

    async def post(self) -> None:
        body = self.read_model(admin_models.ScheduleCreate)
        proc = self.app.registry.get(body.processing)
        if proc is None or proc.mode != "batch":
            known = ", ".join(p.name for p in self.app.registry.of_mode("batch"))
            raise ApiError(
                422, "unknown_job", f"processing must be a batch processing ({known})", "processing"
            )
        values: dict[str, Any] = body.model_dump(exclude_none=True)
        values.setdefault("batch_size", proc.batch_size)
        timing = schedules.Timing(body.interval_seconds, body.cron, body.timezone or "UTC")
        if not await operations.create_schedule(
            self.app.engine, values, timing.first_due(dt.datetime.now(dt.UTC))
        ):
            raise ApiError(409, "exists", "a schedule with this name exists", "name")
        self.set_header("Location", f"/v1/schedules/{body.name}")
        self.write_json(await operations.get_schedule(self.app.engine, body.name), 201)


class ScheduleHandler(AdminHandler):
    route = "/v1/schedules/{name}"

    async def get(self, name: str) -> None:
        self.write_found(await operations.get_schedule(self.app.engine, name), "schedule")

    async def patch(self, name: str) -> None:
        body = self.read_model(admin_models.ScheduleFields)
        current = await operations.get_schedule(self.app.engine, name, ticks=0)
        if current is None:
            raise _not_found("schedule", "name")
        changes: dict[str, Any] = body.model_dump(exclude_none=True)
        next_due = None
        if {"interval_seconds", "cron", "timezone"} & changes.keys():
            if "interval_seconds" in changes:
                changes["cron"] = None
            elif "cron" in changes:
                changes["interval_seconds"] = None
            merged = {**current, **changes}
            if merged["interval_seconds"] is None and merged["cron"] is None:
                raise ApiError(422, "invalid_value", "give interval_seconds or cron", "interval_seconds")
            timing = schedules.Timing(merged["interval_seconds"], merged["cron"], merged["timezone"])
            next_due = timing.first_due(dt.datetime.now(dt.UTC))
        await operations.update_schedule(self.app.engine, name, changes, next_due)
        self.write_json(await operations.get_schedule(self.app.engine, name))

    async def delete(self, name: str) -> None:
        if not await operations.delete_schedule(self.app.engine, name):
            raise _not_found("schedule", "name")
        self.set_status(204)
        self.finish()


class ScheduleRunHandler(AdminHandler):
    route = "/v1/schedules/{name}/run"

    async def post(self, name: str) -> None:
        due = await operations.run_schedule_now(self.app.engine, name)
        if due is None:
            raise _not_found("schedule", "name")
        self.write_json({"schedule": name, "due_at": due.isoformat()}, 202)


class SchedulersHandler(AdminHandler):
    route = "/v1/schedulers"

    async def get(self) -> None:
        self.write_json(await scheduling.schedulers_view(self.app.engine))


# --- processings ---------------------------------------------------------------------------------------


async def _processings(handler: AdminHandler) -> dict[str, dict[str, Any]]:
    app = handler.app
    overrides = await operations.processing_settings(app.engine)
    pending = await operations.claimable_counts(app.engine)
    views = {}
    for name in app.registry:
        proc = app.registry[name]
        paused, deps = overrides.get(name, (False, None))
        views[name] = {
            "name": name,
            "kind": "command" if proc.command else "python",
            "mode": proc.mode,
            "batch_size": proc.batch_size,
            "timeout_seconds": proc.timeout_seconds,
            "max_attempts": proc.max_attempts,
            "interval_seconds": proc.interval_seconds,
            "dependencies": list(deps if deps is not None else proc.dependencies),
            "paused": paused,
            "pending": pending.get(name, 0),
        }
    return views


class ProcessingsHandler(AdminHandler):
    route = "/v1/processings"

    async def get(self) -> None:
        self.write_json({"processings": list((await _processings(self)).values())})


class ProcessingHandler(AdminHandler):
    route = "/v1/processings/{name}"

    async def get(self, name: str) -> None:
        view = (await _processings(self)).get(name)
        if view is None:
            raise _not_found("processing", "name")
        self.write_json(view)

    async def patch(self, name: str) -> None:
        body = self.read_model(admin_models.ProcessingPatch)
        if name not in self.app.registry:
            raise _not_found("processing", "name")
        if body.dependencies is not None:
            known = {d["name"] for d in await dependencies.list_dependencies(self.app.engine)}
            for index, dependency in enumerate(body.dependencies):
                if dependency not in known:
                    raise ApiError(
                        422,
                        "unknown_dependency",
                        f"no dependency named {dependency[:63]!r}",
                        f"dependencies.{index}",
                    )
        await operations.patch_processing(self.app.engine, name, body.paused, body.dependencies)
        self.write_json((await _processings(self))[name])


# --- dependencies --------------------------------------------------------------------------------------


class DependenciesHandler(AdminHandler):
    route = "/v1/dependencies"

    async def get(self) -> None:
        self.write_json({"dependencies": await dependencies.list_dependencies(self.app.engine)})


class DependencyHandler(AdminHandler):
    route = "/v1/dependencies/{name}"

    async def get(self, name: str) -> None:
        self.write_found(await dependencies.get_dependency(self.app.engine, name), "dependency")

    async def put(self, name: str) -> None:
        if not admin_models.DEPENDENCY_NAME.fullmatch(name):
            raise ApiError(
                422, "invalid_value", "name: lower-case letters, digits and . _ - (up to 63)", "name"
            )
        if self.app.squall.dependencies.get(name) is not None:
            raise ApiError(409, "configured", "this dependency comes from configuration", "name")
        body = self.read_model(admin_models.DependencyPut)
        outcome = await dependencies.put_dependency(self.app.engine, name, body.model_dump(), origin="api")
        if outcome == "refused":
            raise ApiError(409, "configured", "this dependency comes from configuration", "name")
        self.write_json(
            await dependencies.get_dependency(self.app.engine, name), 201 if outcome == "created" else 200
        )

    async def delete(self, name: str) -> None:
        outcome = await dependencies.delete_dependency(self.app.engine, name)
        if outcome == "missing":
            raise _not_found("dependency", "name")
        if outcome == "refused":
            raise ApiError(409, "configured", "this dependency comes from configuration", "name")
        self.set_status(204)
        self.finish()


class DependencyCheckHandler(AdminHandler):
    route = "/v1/dependencies/{name}/check"

    async def post(self, name: str) -> None:
        dependency = await dependencies.get_dependency(self.app.engine, name, raw=True)
        if dependency is None:
            raise _not_found("dependency", "name")
        result = await checks.check_and_record(self.app.engine, dependency)
        view = await dependencies.get_dependency(self.app.engine, name)
        assert view is not None
        self.write_json(
            {
                **view,
                "result": {
                    "ok": result.ok,
                    "error": result.error,
                    "duration_seconds": result.duration_seconds,
                },
            }
        )


ROUTES: list[tuple[str, type[AdminHandler]]] = [
    (r"/v1/schedules", SchedulesHandler),
    (r"/v1/schedules/([^/]+)", ScheduleHandler),
    (r"/v1/schedules/([^/]+)/run", ScheduleRunHandler),
    (r"/v1/schedulers", SchedulersHandler),
    (r"/v1/processings", ProcessingsHandler),
    (r"/v1/processings/([^/]+)", ProcessingHandler),
    (r"/v1/dependencies", DependenciesHandler),
    (r"/v1/dependencies/([^/]+)", DependencyHandler),
    (r"/v1/dependencies/([^/]+)/check", DependencyCheckHandler),
]
