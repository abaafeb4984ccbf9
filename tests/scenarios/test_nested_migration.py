"""nested-migration as ``iommulab run`` and ``iommulab sweep`` run it: the --quick
headline, the bounds and the platform refusal."""

from __future__ import annotations

from typing import Any

import pytest

from iommulab.scenarios import SCENARIOS, UsageError, run_scenario
from iommulab.sizes import SZ_2M

QUICK_RAM = 64 << 20


def test_quick_run_headline() -> None:
    h: dict[str, Any] = dict(run_scenario("nested-migration", platform="x86-vtd",
                                          quick=True).headline)
    blocks = QUICK_RAM // SZ_2M
    for ad in ("hw", "preset"):
        split, up = f"split_{ad}", f"upstream_{ad}"
        truth = h[f"{split}.written_pages"] + h[f"{split}.table_pages"]
        assert h[f"{split}.resent_pages"] == truth and h[f"{split}.overshoot_pages"] == 0
        assert h[f"{up}.resent_pages"] > 100 * truth
        assert h[f"{up}.resent_bytes"] % SZ_2M == 0
        assert h[f"{split}.blocks_split"] == h[f"{split}.blocks_merged"] == blocks
        for key in (split, up):
            assert h[f"{key}.missed_pages"] == 0
            assert h[f"{key}.pins_left"] == h[f"{key}.iommu_pages_left"] == 0
        assert h[f"{split}.table_pages_reported"] == h[f"{split}.table_pages"]
    assert h["split_hw.table_pages"] > 0 == h["split_preset.table_pages"]
    # upstream: each round's A/D table page costs its whole 2M block
    assert h["upstream_hw.resent_pages"] > h["upstream_preset.resent_pages"]


@pytest.mark.parametrize(("settings", "platform", "message"), [
    (("guest_ram=8M", "ring=1000"), "x86-vtd", "ring=1000: above half the guest.s 1536"),
    (("kernel=6.6",), "x86-vtd", "kernel=6.6: 6.6 is not one of 6.12, 7.0"),
    (("churn=101",), "x86-vtd", "above the maximum 100"),
    (("guest_ram=2M",), "x86-vtd", "below the minimum 4M"),
    ((), "arm64-smmuv3", r"runs on x86-vtd, not arm64-smmuv3: Linux's arm-smmu-v3 refuses "
                         r"a nest parent with dirty tracking \(IOMMU_HWPT_ALLOC_NEST_PARENT"),
])
def test_bounds(settings: tuple[str, ...], platform: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run_scenario("nested-migration", platform=platform, settings=settings, quick=True)


def test_listed_with_its_platforms() -> None:
    text = SCENARIOS["nested-migration"].describe()
    assert "platforms: x86-vtd" in text and "guest_ad=hw,preset" in text


def test_sweep_points_and_the_platform_refusal() -> None:
    """``iommulab sweep`` expands the modes into points on x86-vtd, and refuses
    arm64-smmuv3 before anything runs, with the reason."""
    from iommulab.sweep.grid import SweepSpec, expand
    points = expand(SweepSpec("nested-migration", {"modes": ["upstream", "split"]}))
    assert [(pt.platform, pt.settings) for pt in points] == [
        ("x86-vtd", ("modes=upstream",)), ("x86-vtd", ("modes=split",))]
    with pytest.raises(UsageError, match="arm64-smmuv3: Linux's arm-smmu-v3 refuses"):
        expand(SweepSpec("nested-migration", {"modes": ["split"]},
                         platforms=("arm64-smmuv3",)))
