"""vfio_iommu_type1_detach_group's order (drivers/vfio/vfio_iommu_type1.c, 6.12 and 7.0):
the group leaves the domain (``iommu_detach_group``) before the last domain's mappings
are unmapped and unpinned, so the SMMU sees the device's STE switched to abort before
the unmap's invalidations; the failures on the way are absorbed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iommulab.drivers.smmuv3.hw import SmmuV3Hw

from ..failnth.scenarios import SCENARIOS
from ..failnth.sweep import World, sweep

UNSET = next(s for s in SCENARIOS if s.name == "VFIO_GROUP_UNSET_CONTAINER")


def _close_both(w: World) -> None:
    w.p.close(w.h["g"])
    w.p.close(w.h["c"])


OPS: dict[str, Callable[[World], object]] = {"UNSET_CONTAINER": UNSET.op,
                                             "close": _close_both}


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_the_ste_blocks_before_the_unmap(kernel: str, op: str) -> None:
    """The last group of a container with a mapping goes: the commands the SMMU consumes
    put the device's STE on the blocking domain (CFGI_STE) before the unmap invalidates
    the range (TLBI_NH_VA; 7.0 the whole ASID), and only then back on its default domain."""
    w = UNSET.setup("arm64-smmuv3", kernel)
    hw = w.m.translator
    assert isinstance(hw, SmmuV3Hw)
    hw.recent_commands.clear()
    OPS[op](w)
    names = [cmd.name for cmd, _, _ in hw.recent_commands]
    unmap = next(i for i, n in enumerate(names) if n.startswith("TLBI_"))
    assert "CFGI_STE" in names[:unmap] and "CFGI_STE" in names[unmap:]
    w.close()


@pytest.mark.parametrize("platform", ["arm64-smmuv3", "x86-vtd"])
def test_close_sweep_absorbs_every_point(platform: str) -> None:
    """Closing the group and the container fails nothing: every allocation point on the
    way (the IOVA list's copy and rebuild, the slow unmap's list, the nofail moves of the
    group) is absorbed, and everything is released."""
    points = sweep(lambda: UNSET.setup(platform, "6.12"), _close_both)
    assert points and all(p.errno is None for p in points)
    assert any(p.site.startswith("vfio_iommu_type1_detach_group:") for p in points)
