"""requirements/*.lock, the hash-pinned files the image is built from, follow pyproject.toml (no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy import image as recipe


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every requirement a lock file pins."""
    found: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            found[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return found


def expected(lock: Path) -> list[Requirement]:
    """The requirements of pyproject.toml a lock file must satisfy."""
    inputs = recipe.lock_inputs()[lock]
    if lock == recipe.BUILD_LOCK:
        return [Requirement(r) for r in inputs["build-system"]]
    return [Requirement(r) for r in inputs["dependencies"]] + [
        Requirement(r) for extra in inputs["extras"].values() for r in extra
    ]


@pytest.mark.parametrize("lock", [recipe.IMAGE_LOCK, recipe.BUILD_LOCK], ids=lambda p: p.name)
def test_lock_is_made_from_pyproject_as_it_is(lock: Path) -> None:
    assert recipe.lock_is_current(lock), f"{lock.name} is stale: run python3 tasks.py lock"
    pinned = pins(lock)
    for requirement in expected(lock):
        version = pinned[canonicalize_name(requirement.name)][0]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    assert pinned and all(hashes > 0 for _, hashes in pinned.values()), "every pin has its hashes"


def test_a_changed_dependency_list_makes_the_lock_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a new range in pyproject.toml is a new digest."""
    inputs = recipe.lock_inputs()
    inputs[recipe.IMAGE_LOCK]["dependencies"] = [*inputs[recipe.IMAGE_LOCK]["dependencies"], "six>=1"]
    monkeypatch.setattr(recipe, "lock_inputs", lambda: inputs)
    assert not recipe.lock_is_current(recipe.IMAGE_LOCK)
    assert recipe.lock_is_current(recipe.BUILD_LOCK)


def test_every_extra_is_in_the_image_or_said_why_not() -> None:
    extras = set(recipe.project()["project"]["optional-dependencies"])
    assert set(recipe.IMAGE_EXTRAS) | set(recipe.NOT_IN_IMAGE) == extras
    assert not set(recipe.IMAGE_EXTRAS) & set(recipe.NOT_IN_IMAGE)
    # Nothing of the build tools gets into the image's lock.
    assert not {"hatchling", "pip", "setuptools", "wheel"} & set(pins(recipe.IMAGE_LOCK))
