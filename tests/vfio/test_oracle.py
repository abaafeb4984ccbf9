"""Every recorded real-kernel VFIO type1 answer, replayed on the x86-vtd model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .oracle import Type1Replayer, load

CASES = [c for c in load("vfio_type1.sample.jsonl") if c["section"] != "meta"]


@pytest.fixture(scope="module")
def replayer() -> Iterator[Type1Replayer]:
    r = Type1Replayer()
    yield r
    r.close()
    assert r.m.mem.pins.pins == 0 and r.p.mm.locked_vm == 0


def test_the_sample_is_there() -> None:
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES, ids=[f"{c['section']}:{c['case']}" for c in CASES])
def test_same_answer_as_linux(replayer: Type1Replayer, case: dict[str, Any]) -> None:
    if case["section"] != replayer.section:
        replayer.section = case["section"]
        replayer.fresh_section(case["section"])
    got = replayer.run(case)
    assert (got.ret, got.errno) == (case["ret"], case["errno"]), case["errno_name"]
    for key, want in case["out"].items():
        assert got.out.get(key) == want, key
