"""The fail-nth sweep of every ioctl the model implements (see :mod:`.sweep`), on every
platform and kernel that has it (:mod:`.scenarios`)."""

from __future__ import annotations

import pytest

from .scenarios import SCENARIOS, Scenario
from .sweep import sweep

CASES = [pytest.param(s, p, k, id=f"{s.name}-{p}-{k}")
         for s in SCENARIOS for p in s.platforms for k in s.kernels]


@pytest.mark.parametrize(("scenario", "platform", "kernel"), CASES)
def test_fail_nth_sweep(scenario: Scenario, platform: str, kernel: str) -> None:
    """Each allocation point of the call failed in turn: the kernel's errno, no trace;
    then the call succeeds and everything is released at exit."""
    sweep(lambda: scenario.setup(platform, kernel), scenario.op, absorbs=scenario.absorbs,
          expect=scenario.expect, relax=scenario.relax)
