from __future__ import annotations

from collections.abc import Iterator

import pytest

from .platform import Platform, make_platform


@pytest.fixture
def plat() -> Iterator[Platform]:
    p = make_platform()
    yield p
    p.close()
