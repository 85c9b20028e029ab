"""Models of the operator API (schedules, processings, dependencies), validated strictly.

Every model forbids unknown fields; the gateway turns a validation error into a 422 naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from squall.core import schedules, targets
from squall.core.rules import MisfirePolicy

SCHEDULE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
DEPENDENCY_NAME = SCHEDULE_NAME

Seconds = Annotated[float, Field(gt=0, le=86_400 * 31)]
IntervalSeconds = Annotated[float, Field(ge=schedules.MIN_INTERVAL_SECONDS, le=86_400 * 366)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScheduleFields(_Strict):
    """Fields of a schedule that a PATCH may change (all optional)."""

    interval_seconds: IntervalSeconds | None = Field(None, description="Every N seconds (or cron).")
    cron: str | None = Field(None, max_length=200, description="Five-field cron expression (or interval).")
    timezone: str | None = Field(None, max_length=64, description="Time zone of the cron expression.")
    enabled: bool | None = None
    batch_size: int | None = Field(None, ge=1, le=100_000, description="Items per poll task.")
    max_batches_per_tick: int | None = Field(None, ge=1, le=1000, description="Poll tasks a tick may emit.")
    misfire_policy: MisfirePolicy | None = None
    catch_up_limit: int | None = Field(None, ge=1, le=10_000, description="Late ticks catch_up may run.")
    jitter_seconds: float | None = Field(None, ge=0, le=3600, description="Delay of each tick, up to this.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            schedules.validate_cron(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            schedules.validate_timezone(value)
        return value

    @model_validator(mode="after")
    def _timing(self) -> ScheduleFields:
        if self.interval_seconds is not None and self.cron is not None:
            raise ValueError("give interval_seconds or cron, not both")
        return self


class ScheduleCreate(ScheduleFields):
    name: str = Field(min_length=1, max_length=63, pattern=SCHEDULE_NAME.pattern)
    processing: str = Field(min_length=1, max_length=63)

    @model_validator(mode="after")
    def _needs_timing(self) -> ScheduleCreate:
        if self.interval_seconds is None and self.cron is None:
            raise ValueError("give interval_seconds or cron")
        return self


class ProcessingPatch(_Strict):
    paused: bool | None = Field(None, description="Hold back this processing's ticks and batches.")
    dependencies: list[Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=50, description="Names of the dependencies it needs (replaces the registration's)."
    )


class DependencyPut(_Strict):
    kind: Literal["http", "tcp", "sql"] = Field(
        description="command dependencies come only from configuration, never from the API"
    )
    target: str = Field(min_length=1, max_length=2000)
    interval_seconds: Seconds = 10.0
    timeout_seconds: Seconds = 5.0
    failure_threshold: int = Field(1, ge=1, le=1000)
    recovery_threshold: int = Field(1, ge=1, le=1000)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str, info: ValidationInfo) -> str:
        if "kind" in info.data:
            targets.validate_target(info.data["kind"], value)
        return value
