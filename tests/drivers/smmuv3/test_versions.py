"""Where arm-smmu-v3.c of Linux 6.12 and 7.0 differ: domain allocation flags, the sizes
of the page tables (``smmu->ias``), the features probed, and the one ASID space."""

from __future__ import annotations

import errno

import pytest

from iommulab.drivers.smmuv3 import (
    HWPT_ALLOC_DIRTY_TRACKING,
    HWPT_ALLOC_NEST_PARENT,
    HWPT_ALLOC_PASID,
    ArmSmmuDevice,
    Feature,
    SmmuV3Config,
    SmmuV3Hw,
)
from iommulab.drivers.smmuv3.regs import CD0
from iommulab.errors import DmaFault, KernelError
from iommulab.kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.pgtable import Quirk
from iommulab.sizes import SZ_2M

from .platform import RW, Platform, command_delta, commands, make_platform


@pytest.mark.parametrize(("config", "flags", "stage"), [
    ({}, 0, 1),
    ({}, HWPT_ALLOC_DIRTY_TRACKING, 1),
    ({"stages": "s2"}, 0, 2),  # finalise: no stage 1, so stage 2
])
def test_6_12_domain_alloc_user_gives_stage_1_where_there_is_one(
        config: dict[str, object], flags: int, stage: int) -> None:
    """arm_smmu_domain_alloc_user (6.12): the kzalloc'ed stage is S1, and
    arm_smmu_domain_finalise moves it to S2 only when the SMMU lacks stage 1."""
    p = make_platform(kernel="6.12", **config)
    master, _ = p.device()
    d = p.domain(master, flags, attach=False)
    assert (d.stage, d.nest_parent) == (stage, False)
    assert (d.dirty_ops is not None) == bool(flags)
    p.close()


@pytest.mark.parametrize(("config", "flags", "match"), [
    ({}, HWPT_ALLOC_NEST_PARENT, "only IOMMU_HWPT_ALLOC_DIRTY_TRACKING"),
    ({}, HWPT_ALLOC_PASID, "only IOMMU_HWPT_ALLOC_DIRTY_TRACKING"),
    ({}, HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING, "only"),
    ({"stages": "s2"}, HWPT_ALLOC_DIRTY_TRACKING, "stage 2"),
])
def test_6_12_domain_alloc_user_refuses_all_but_dirty_tracking(
        config: dict[str, object], flags: int, match: str) -> None:
    """arm_smmu_domain_alloc_user (6.12): PAGING_FLAGS is IOMMU_HWPT_ALLOC_DIRTY_TRACKING
    alone, ``if (flags & ~PAGING_FLAGS) return ERR_PTR(-EOPNOTSUPP)``; a stage-2 domain
    with dirty tracking is EOPNOTSUPP in finalise. 7.0 makes NEST_PARENT a stage-2 nest
    parent and PASID a stage-1 domain (test_driver.py)."""
    p = make_platform(kernel="6.12", **config)
    master, _ = p.device()
    with pytest.raises(KernelError, match=match) as exc:
        p.smmu.domain_alloc_paging_flags(master, flags)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert not p.smmu.asids and not p.smmu.vmids
    p.close()


def test_7_0_nest_parent_with_dirty_tracking_is_eopnotsupp() -> None:
    p = make_platform(kernel="7.0")
    master, _ = p.device()
    with pytest.raises(KernelError) as exc:
        p.smmu.domain_alloc_paging_flags(master, HWPT_ALLOC_NEST_PARENT |
                                         HWPT_ALLOC_DIRTY_TRACKING)
    assert exc.value.errno == errno.EOPNOTSUPP
    nest = p.domain(master, HWPT_ALLOC_NEST_PARENT, attach=False)
    assert (nest.stage, nest.nest_parent) == (2, True)
    p.close()


@pytest.mark.parametrize(("kernel", "s1_oas", "ips", "s2_ias"), [
    ("6.12", 40, 2, 40),  # smmu->ias = 40 (AArch32 TTF) = max(ias, oas)
    ("7.0", 36, 1, 36),  # no ias: the OAS everywhere
])
def test_aarch32_table_format_sizes_by_version(kernel: str, s1_oas: int, ips: int,
                                               s2_ias: int) -> None:
    """arm_smmu_domain_finalise, 6.12: S1 ``pgtbl_cfg.oas = smmu->ias``, S2
    ``pgtbl_cfg.ias = smmu->ias`` with ``smmu->ias = 40`` for IDR0_TTF_AARCH32_64 and
    ``max(smmu->ias, smmu->oas)``; 7.0 uses ``smmu->oas`` for both."""
    p = make_platform(kernel=kernel, ttf=3, oas=36)
    master, _ = p.device()
    s1 = p.domain(master)
    assert s1.pgtbl is not None and s1.pgtbl.cfg.oas == s1_oas
    assert CD0["IPS"].get(int(master.cd_table[0])) == ips  # type: ignore[index]
    s2_plat = make_platform(kernel=kernel, ttf=3, oas=36, stages="s2")
    s2_master = s2_plat.device(0x20)[0]
    s2 = s2_plat.domain(s2_master)
    assert s2.pgtbl is not None and s2.pgtbl.cfg.ias == s2_ias
    assert s2.geometry.aperture_end == (1 << s2_ias) - 1
    s2_vtcr = s2.pgtbl.cfg.arm_lpae_s2_cfg
    assert s2_vtcr is not None and s2_vtcr.vtcr.tsz == 64 - s2_ias
    s2_plat.close()
    p.close()


@pytest.mark.parametrize("kernel", [LINUX_6_12, LINUX_7_0])
def test_s2fwb_is_probed_by_7_0_only(kernel: KernelVersion) -> None:
    """IDR3.FWB gives ARM_SMMU_FEAT_S2FWB (and the nest parent's S2FWB quirk) in 7.0;
    6.12 does not read it."""
    p = make_platform(kernel=str(kernel), fwb=True)
    assert bool(p.smmu.features & Feature.S2FWB) == (kernel == LINUX_7_0)
    if kernel == LINUX_7_0:
        master, _ = p.device()
        nest = p.domain(master, HWPT_ALLOC_NEST_PARENT, attach=False)
        assert nest.pgtbl is not None and nest.pgtbl.cfg.quirks == Quirk.ARM_S2FWB
    p.close()


def test_one_asid_space_for_every_smmu_of_a_machine(plat: Platform) -> None:
    """arm_smmu_asid_xa is file-global (DEFINE_XARRAY_ALLOC1): a second SMMU of the same
    kernel (given the same asid_xa) gets ASID 2 for its first stage-1 domain, and
    freeing gives the number back to both. An SMMU given none is its kernel's only one."""
    other = ArmSmmuDevice(SmmuV3Hw(plat.mem, SmmuV3Config()), asid_xa=plat.smmu.asid_xa)
    a = plat.domain(plat.device()[0], attach=False)
    b = other.domain_alloc_paging_flags(other.probe_device(0x10))
    assert (a.asid, b.asid) == (1, 2)
    assert sorted(plat.smmu.asid_xa) == [1, 2] and plat.smmu.asid_xa is other.asid_xa
    assert (list(plat.smmu.asids), list(other.asids)) == ([1], [2])
    a.free()
    plat.domains.remove(a)
    c = other.domain_alloc_paging_flags(other.probe_device(0x11))
    assert c.asid == 1
    for d in (b, c):
        d.free()
    for master in list(other.masters.values()):
        other.release_device(master)
    other.remove()
    assert not plat.smmu.asid_xa
    alone = ArmSmmuDevice(SmmuV3Hw(PhysMem("64M"), SmmuV3Config()))
    assert alone.asid_xa == {} and alone.asid_xa is not plat.smmu.asid_xa


def test_asid_exhaustion_is_shared_between_smmus() -> None:
    """xa_alloc(..., XA_LIMIT(1, (1 << smmu->asid_bits) - 1)) fails with EBUSY when the
    shared xarray has no free index in this SMMU's range."""
    p = make_platform(asid_bits=8)
    other = ArmSmmuDevice(SmmuV3Hw(p.mem, SmmuV3Config(asid_bits=8)), asid_xa=p.smmu.asid_xa)
    om = other.probe_device(0x10)
    taken = [other.domain_alloc_paging_flags(om) for _ in range(255)]
    master, _ = p.device()
    with pytest.raises(KernelError) as exc:
        p.smmu.domain_alloc_paging_flags(master)
    assert exc.value.errno == errno.EBUSY
    for d in taken:
        d.free()
    other.release_device(om)
    other.remove()
    p.close()


def test_6_12_without_ril_every_granule_gets_its_own_command() -> None:
    """__arm_smmu_tlb_inv_range (6.12) has no MAX_TLBI_OPS cut-off: the walk flush of a
    2M table of 4K pages is 512 TLBI_NH_VA (batches of 64, the last synced), then the
    gathered 2M leaf one more; 7.0 sends one TLBI_NH_ASID for the walk flush."""
    p = make_platform(ril=False, kernel="6.12")
    master, _ = p.device()
    d = p.domain(master)
    d.map(0, 0x8000_1000, SZ_2M, RW)  # unaligned PA: a table of 512 pages
    before = commands(p)
    d.unmap(0, SZ_2M)
    assert command_delta(p, before) == {"TLBI_NH_VA": 513, "CMD_SYNC": 2}
    p.close()


def test_6_12_invalidates_unattached_domains_and_on_free() -> None:
    """6.12 arm_smmu_tlb_inv_range_domain / arm_smmu_tlb_inv_context send their commands
    whether or not a stream is attached (there is no invalidation array); freeing the
    domain flushes its ASID (free_io_pgtable_ops -> tlb_flush_all)."""
    p = make_platform(kernel="6.12")
    master, _ = p.device()
    d = p.domain(master, attach=False)
    before = commands(p)
    d.map(0, 0x8000_0000, SZ_2M, RW)
    d.unmap(0, SZ_2M)
    d.flush_iotlb_all()
    assert command_delta(p, before) == {"TLBI_NH_VA": 1, "TLBI_NH_ASID": 1, "CMD_SYNC": 2}
    before = commands(p)
    d.free()
    p.domains.remove(d)
    assert command_delta(p, before) == {"TLBI_NH_ASID": 1, "CMD_SYNC": 1}
    p.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_the_last_stream_leaving_flushes_the_asid_in_7_0_only(kernel: str) -> None:
    """7.0 arm_smmu_install_old_domain_invs: an ASID no longer in any invalidation array
    is flushed at once (arm_smmu_inv_flush_iotlb_tag); 6.12's attach does not flush."""
    p = make_platform(kernel=kernel)
    master, _ = p.device()
    p.domain(master)
    b = p.domain(master, attach=False)
    before = commands(p)
    p.smmu.attach_dev(b, master)
    flush = {"TLBI_NH_ASID": 1} if kernel == "7.0" else {}
    syncs = 4 if kernel == "7.0" else 3
    assert command_delta(p, before) == {"CFGI_CD": 3, "CMD_SYNC": syncs, "PREFETCH_CFG": 1, **flush}
    p.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_unmapping_4k_of_a_2m_block_through_the_smmu(kernel: str) -> None:
    """iommu_unmap of one 4K page inside a 2M block: 6.12's split returns 4K and the
    gathered page is invalidated with one TLBI_NH_VA (leaf, TTL 3); the page then faults
    and the rest of the block still translates. 7.0 unmaps nothing (0, no command)."""
    p = make_platform(kernel=kernel)
    master, dev = p.device()
    d = p.domain(master)
    buf = p.buffer(SZ_2M)
    d.map(0x4000_0000, buf, SZ_2M, RW)
    assert dev.dma_read(0x4000_1000, 8)  # the block is in the IOTLB now
    before = commands(p)
    unmapped = d.unmap(0x4000_1000, 0x1000)
    if kernel == "6.12":
        assert unmapped == 0x1000
        assert command_delta(p, before) == {"TLBI_NH_VA": 1, "CMD_SYNC": 1}
        with pytest.raises(DmaFault):
            dev.dma_read(0x4000_1000, 8)
        p.smmu.handle_events()
        assert dev.dma_read(0x4000_2000, 8) == (buf + 0x2000 >> 12).to_bytes(8, "little")
    else:
        assert unmapped == 0 and command_delta(p, before) == {}
    d.unmap(0x4000_0000, SZ_2M)
    p.close()


def test_7_0_nest_parent_invalidation_also_clears_the_nested_stage_1() -> None:
    """__arm_smmu_domain_inv_range (7.0): a nest parent's array holds INV_TYPE_S2_VMID and
    INV_TYPE_S2_VMID_S1_CLEAR; the TLBI_S2_IPA batch is synced, then TLBI_NH_ALL of the
    VMID goes in a batch of its own (arm_smmu_invs_end_batch)."""
    p = make_platform(kernel="7.0")
    master, _ = p.device()
    nest = p.domain(master, HWPT_ALLOC_NEST_PARENT)
    nest.map(SZ_2M, 0x8000_0000, SZ_2M, RW)
    recent = len(p.hw.recent_commands)
    nest.unmap(SZ_2M, SZ_2M)
    ops = [c.name for c, _, _ in list(p.hw.recent_commands)[recent:]]
    assert ops == ["TLBI_S2_IPA", "CMD_SYNC", "TLBI_NH_ALL", "CMD_SYNC"]
    p.smmu.attach_dev(p.smmu.blocked_domain, master)
    p.close()
