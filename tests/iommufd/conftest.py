"""Fixtures the iommufd selftest ports share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .selftest_lib import IoasFix


@pytest.fixture(params=["no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit"])
def f(request: pytest.FixtureRequest) -> Iterator[IoasFix]:
    """FIXTURE(iommufd_ioas) with its four variants; nothing pinned or charged after."""
    fix = IoasFix(request.param)
    yield fix
    fix.t.close()
