"""Command encoding and the driver's range invalidation, against hand-worked kernel cases."""

from __future__ import annotations

import pytest

from iommulab.drivers.smmuv3.cmds import (
    cfgi_all,
    cfgi_ste,
    cmd_sync,
    inv_size_too_big,
    tlbi_context,
    tlbi_range,
)
from iommulab.drivers.smmuv3.regs import Cmd
from iommulab.sizes import SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

NH_VA, S2_IPA = Cmd.TLBI_NH_VA, Cmd.TLBI_S2_IPA


def test_ril_leaf_range_is_split_by_the_lowest_set_bit() -> None:
    # 33 pages: one command for 1 page (SCALE 0), one for 32 (NUM 0, SCALE 5); TG 4K, TTL 3.
    cmds = tlbi_range(NH_VA, 0x10000, 33 * SZ_4K, SZ_4K, 12, leaf=True, asid=5)
    assert cmds == [(0x0005_0000_0000_0012, 0x10701), (0x0005_0000_0050_0012, 0x11701)]


def test_ril_non_leaf_range_of_32n_plus_1_pages_grows_by_one_page() -> None:
    # Linux 6.6 "Avoid constructing invalid range commands": 33 -> 34 pages, NUM 16, SCALE 1.
    cmds = tlbi_range(NH_VA, 0x10000, 33 * SZ_4K, SZ_4K, 12, leaf=False, asid=5)
    assert cmds == [(0x0005_0000_0011_0012, 0x10400)]


def test_ril_block_invalidation_hints_its_level() -> None:
    # One 2M block at stage 2: 512 pages = NUM 0, SCALE 9; TTL 2 (level of a 2M leaf).
    cmds = tlbi_range(S2_IPA, 0x4000_0000, SZ_2M, SZ_2M, 12, leaf=True, vmid=7)
    assert cmds == [(0x0000_0007_0090_002A, 0x4000_0601)]


def test_ril_mixed_run() -> None:
    cmds = tlbi_range(NH_VA, 0, 67 * SZ_4K, SZ_4K, 12, leaf=True, asid=1)
    assert [(w0 >> 12 & 0x1F, w0 >> 20 & 0x1F, w1 & ~0xFFF) for w0, w1 in cmds] == [
        (2, 0, 0), (0, 6, 3 * SZ_4K)]  # 3 pages, then 64


def test_without_ril_one_command_per_granule() -> None:
    cmds = tlbi_range(NH_VA, 0x10000, 8 * SZ_4K, SZ_4K, 12, leaf=True, asid=5, ril=False)
    assert [w1 for _, w1 in cmds] == [0x10001 + i * SZ_4K for i in range(8)]
    assert {w0 for w0, _ in cmds} == {0x0005_0000_0000_0012}


@pytest.mark.parametrize(("granule", "limit"), [(SZ_4K, SZ_2M), (SZ_16K, SZ_32M),
                                                (SZ_64K, SZ_512M)])
def test_size_too_big_follows_max_tlbi_ops(granule: int, limit: int) -> None:
    assert not inv_size_too_big(limit - granule, granule, ril=False)
    assert inv_size_too_big(limit, granule, ril=False)
    assert not inv_size_too_big(limit, granule, ril=True)
    assert inv_size_too_big(0, granule, ril=True)  # 0 means everything


def test_context_and_config_commands() -> None:
    assert tlbi_context(Cmd.TLBI_NH_ASID, asid=0x1234) == (0x1234_0000_0000_0011, 0)
    assert tlbi_context(Cmd.TLBI_S12_VMALL, vmid=3) == (0x0000_0003_0000_0028, 0)
    assert cfgi_ste(0x42) == (0x0000_0042_0000_0003, 1)
    assert cfgi_all() == (0x4, 31)
    w0, _ = cmd_sync()
    assert w0 & 0xFF == 0x46 and (w0 >> 12) & 3 == 2  # CS = SEV
