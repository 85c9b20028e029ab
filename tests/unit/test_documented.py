"""Every setting and every metric is documented where a user looks: docs/settings.md and
docs/observability.md name each one."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from squall.core import metrics
from squall.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Settings documented as a family (one row for every name): per-processing overrides and dependencies.
FAMILIES = ("SQUALL_PROCESSINGS__", "SQUALL_DEPENDENCIES__")


def variables(model: type[BaseModel], prefix: str = "SQUALL_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(variables(annotation, f"{prefix}{name.upper()}__"))
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_in_the_settings_reference() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    missing = [
        name
        for name in variables(Settings)
        if name not in text
        and not name.startswith(FAMILIES)
        # A row may name a group by its last part: `SQUALL_GATEWAY__HOST` / `__PORT`.
        and f"__{name.rsplit('__', 1)[-1]}`" not in text
    ]
    assert missing == []


def test_every_metric_is_in_the_observability_reference() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    names = {
        collector._name  # type: ignore[attr-defined]
        for collector in vars(metrics).values()
        if hasattr(collector, "_name") and hasattr(collector, "_type")
    }
    assert names, "no metric found in squall.core.metrics"
    missing = sorted(name for name in names if name not in text and f"{name}_total" not in text)
    assert missing == []
