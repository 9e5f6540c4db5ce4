"""Fixtures of the packaging tests: the manifests and the chart rendered by Helm.

Rendering goes through scripts/check_packaging.py (the real Helm engine via
helm-sdkpy, in a child process); a render costs about a second, so the renders
the tests share are session fixtures.
"""

from __future__ import annotations

from typing import Any

import pytest
from packaging_helpers import FULL_VALUES, REPO, check_packaging, load_objects


@pytest.fixture(scope="session")
def install_objects() -> list[dict[str, Any]]:
    return load_objects(REPO / "install.yaml")


@pytest.fixture(scope="session")
def install_anp_objects() -> list[dict[str, Any]]:
    return load_objects(REPO / "install-anp.yaml")


@pytest.fixture(scope="session")
def rendered_default() -> Any:
    return check_packaging.render_chart()


@pytest.fixture(scope="session")
def rendered_full() -> Any:
    return check_packaging.render_chart(FULL_VALUES)
