from __future__ import annotations

from collections.abc import Iterator

import pytest

from .platform import Platform, make_platform


@pytest.fixture
def plat() -> Iterator[Platform]:
    p = make_platform()
    yield p
    p.close()


@pytest.fixture
def plat7() -> Iterator[Platform]:
    """The platform with a driver answering as Linux 7.0."""
    p = make_platform(kernel="7.0")
    yield p
    p.close()
