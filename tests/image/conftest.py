"""The image, built once per session by the code ``python3 tasks.py image`` runs (deploy/image.py), and the
chart's containers run from it (tests/image/pods.py) against PostgreSQL and NATS on the host's loopback."""

from __future__ import annotations

import pytest

from deploy import image as recipe

# The integration tests' PostgreSQL: one server per session (the pgserver wheel), or --database-url.
from tests.integration.conftest import postgres_template  # noqa: F401


@pytest.fixture(scope="session")
def image() -> recipe.Built:
    """localhost/squall:<version>, built from the Dockerfile as ``python3 tasks.py image`` builds it."""
    return recipe.build()
