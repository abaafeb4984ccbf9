"""The seven TEST_FAIL_NTH sequences of iommufd_fail_nth.c run as the kernel's harness
runs them (:mod:`.kernel_sequences`), on both kernels."""

from __future__ import annotations

import pytest

from .kernel_sequences import SEQUENCES, Sequence, logged_sites, run_fail_nth
from .kernel_sites import SEQUENCE_SITES

CASES = [pytest.param(s, k, id=f"{s.name}-{k}") for s in SEQUENCES for k in ("6.12", "7.0")]


@pytest.mark.parametrize(("seq", "kernel"), CASES)
def test_fail_nth_sequence(seq: Sequence, kernel: str) -> None:
    """Every point after ``fail_nth_enable()`` failed in turn: only OSErrors with the
    point's errno, nothing left after teardown; the sweep takes one step per point the
    sequence reaches, so its length is the number of points the model has on the path."""
    run = run_fail_nth(seq, kernel)
    sites = logged_sites(seq, kernel)
    assert [site for site, _ in run.points] == sites
    if kernel == "6.12":  # one step per point 6.12 has on the path (test_kernel_sites)
        assert run.steps == len(SEQUENCE_SITES[seq.name])
