"""The arm-smmu-v3 driver: probe, domains, attach, invalidation commands, errors."""

from __future__ import annotations

import errno
from collections import Counter

import pytest

from iommulab import Prot
from iommulab.drivers.smmuv3 import (
    HWPT_ALLOC_DIRTY_TRACKING,
    HWPT_ALLOC_NEST_PARENT,
    HWPT_ALLOC_PASID,
    ArmSmmuDevice,
    ArmSmmuDomain,
    Feature,
    SmmuV3Config,
    SmmuV3Hw,
)
from iommulab.drivers.smmuv3.regs import CD0, STE0, STE1, Reg
from iommulab.errors import DmaFault, KernelError, OutOfMemory
from iommulab.iommu import MSI_IOVA_BASE, IommuCap, ResvType
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K, SZ_512M

from .platform import RW, Platform, command_delta, commands, make_platform


# -- probe ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_probe_derives_features_and_sizes(kernel: str) -> None:
    """arm_smmu_device_hw_probe; IDR3.BBM == 2 gives ARM_SMMU_FEAT_BBML2 in 7.0 only."""
    plat = make_platform(kernel=kernel)
    s = plat.smmu
    want = (Feature.TRANS_S1 | Feature.TRANS_S2 | Feature.NESTING | Feature.HA | Feature.HD |
            Feature.COHERENCY | Feature.RANGE_INV | Feature.TT_LE)
    if kernel == "7.0":
        want |= Feature.BBML2
    assert s.features & (want | Feature.BBML2) == want and not s.features & Feature.VAX
    assert (s.ias, s.oas, s.asid_bits, s.vmid_bits, s.sid_bits) == (48, 48, 16, 16, 8)
    assert s.pgsize_bitmap == 0x62215000  # 4K|2M|1G, 16K|32M, 64K|512M
    assert plat.hw.enabled
    assert commands(plat) == Counter({"CFGI_ALL": 1, "TLBI_NSNH_ALL": 1, "CMD_SYNC": 2})
    plat.close()


def test_52_bit_output_adds_the_4tb_page_and_vax_widens_stage1() -> None:
    p = make_platform(oas=52, vax52=True)
    assert p.smmu.oas == 52 and p.smmu.pgsize_bitmap & (1 << 42)
    master, _ = p.device()
    assert p.domain(master).geometry.aperture_end == (1 << 48) - 1  # VA_BITS 48
    p.close()
    mem = PhysMem("4G")
    # A 52-bit stage 1 needs the 64K granule: a kernel with 64K pages and VA_BITS 52.
    smmu = ArmSmmuDevice(SmmuV3Hw(mem, SmmuV3Config(vax52=True)), va_bits=52,
                         cpu_page_size=SZ_64K)
    d = smmu.domain_alloc_paging_flags(smmu.probe_device(1))
    assert d.geometry.aperture_end == (1 << 52) - 1 and d.pgsize_bitmap == SZ_64K | SZ_512M
    smmu.release_device(smmu.masters[1])
    d.free()
    smmu.remove()


@pytest.mark.parametrize(("config", "message"), [
    ({"stages": "none"}, "no translation support!"),
    ({"ttf": 1}, "AArch64 table format not supported!"),
    ({"cmdq_shift": 6}, "command queue size <= 64 entries not supported"),
])
def test_probe_refuses_unusable_hardware(config: dict[str, object], message: str) -> None:
    mem = PhysMem("1G")
    with pytest.raises(KernelError) as exc:
        ArmSmmuDevice(SmmuV3Hw(mem, SmmuV3Config(**config)))  # type: ignore[arg-type]
    assert exc.value.errno == errno.ENXIO and message in str(exc.value)
    assert mem.frames.allocated_blocks == 0


def test_aarch32_table_format_sets_a_40_bit_ias_then_oas_wins() -> None:
    p = make_platform(ttf=3, oas=44)
    assert p.smmu.ias == 44
    p.close()


@pytest.mark.parametrize(("httu", "coherent", "ha", "hd", "dirty_cap"), [
    ("access+dirty", True, True, True, True),
    ("access+dirty", False, True, True, False),  # dirty tracking also needs coherency
    ("access", True, True, False, False),
    ("none", True, False, False, False),
])
def test_httu_features_and_the_dirty_capability(httu: str, coherent: bool, ha: bool, hd: bool,
                                                dirty_cap: bool) -> None:
    p = make_platform(httu=httu, coherent=coherent)
    f = p.smmu.features
    assert (bool(f & Feature.HA), bool(f & Feature.HD)) == (ha, hd)
    master, _ = p.device()
    assert p.smmu.capable(master, IommuCap.DIRTY_TRACKING) is dirty_cap
    assert p.smmu.capable(master, IommuCap.CACHE_COHERENCY) is coherent
    assert p.smmu.capable(master, IommuCap.NOEXEC) and \
        p.smmu.capable(master, IommuCap.DEFERRED_FLUSH)
    assert not p.smmu.capable(master, IommuCap.PCI_ATS_SUPPORTED)
    p.close()


def test_queue_allocation_falls_back_to_a_smaller_queue() -> None:
    mem = PhysMem("1G")
    mem.fail_nth.arm(1)  # the first try for the command queue
    smmu = ArmSmmuDevice(SmmuV3Hw(mem, SmmuV3Config(cmdq_shift=10)))
    assert smmu.cmdq_shift == 9 and mem.fail_nth.triggered
    smmu.remove()
    assert mem.frames.allocated_blocks == 0


def test_stream_table_allocation_failure_frees_the_queues() -> None:
    mem = PhysMem("1G")
    mem.fail_nth.arm(3)  # cmdq, evtq, then the stream table
    with pytest.raises(OutOfMemory):
        ArmSmmuDevice(SmmuV3Hw(mem, SmmuV3Config()))
    assert mem.frames.allocated_blocks == 0


def test_reserved_regions_are_the_software_msi_window(plat: Platform) -> None:
    master, _ = plat.device()
    (region,) = plat.smmu.get_resv_regions(master)
    assert (region.start, region.length, region.type) == (MSI_IOVA_BASE, 0x100000,
                                                          ResvType.SW_MSI)
    assert region.prot == Prot.WRITE | Prot.NOEXEC | Prot.MMIO


# -- devices and domains -------------------------------------------------------------------------
@pytest.mark.parametrize(("kernel", "alias_errno"), [("6.12", errno.EINVAL),
                                                     ("7.0", errno.ENODEV)])
def test_probe_device_errors(kernel: str, alias_errno: int) -> None:
    """arm_smmu_insert_master: a StreamID another device has is -EINVAL ("stream %u already
    in tree", 6.12) or -ENODEV ("Aliasing StreamID ... unsupported", 7.0)."""
    plat = make_platform(kernel=kernel)
    plat.device(0x10)
    with pytest.raises(KernelError) as exc:
        plat.smmu.probe_device(0x100)
    assert exc.value.errno == errno.ERANGE and "0x100" in str(exc.value)
    with pytest.raises(KernelError) as exc:
        plat.smmu.probe_device([0x11, 0x10])
    assert exc.value.errno == alias_errno
    assert sorted(plat.smmu.masters) == [0x10]  # nothing half-registered
    with pytest.raises(KernelError) as exc:
        plat.smmu.probe_device([])
    assert exc.value.errno == errno.EINVAL
    plat.close()


@pytest.mark.parametrize(("config", "flags", "stage"), [
    ({}, 0, 1),
    ({"stages": "s2"}, 0, 2),
    ({}, HWPT_ALLOC_NEST_PARENT, 2),
    ({}, HWPT_ALLOC_DIRTY_TRACKING, 1),
    ({}, HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_PASID, 1),
    ({}, HWPT_ALLOC_PASID, 1),
])
def test_domain_stage_follows_the_flags(config: dict[str, object], flags: int,
                                        stage: int) -> None:
    """arm_smmu_domain_alloc_paging_flags (7.0)."""
    p = make_platform(kernel="7.0", **config)
    master, _ = p.device()
    d = p.domain(master, flags, attach=False)
    assert d.stage == stage
    assert (d.dirty_ops is not None) == bool(flags & HWPT_ALLOC_DIRTY_TRACKING)
    assert (d.asid, d.vmid) == ((1, 0) if stage == 1 else (0, 1))
    p.close()


@pytest.mark.parametrize(("config", "flags", "match"), [
    ({}, 1 << 2, "unknown flags 0x4"),  # IOMMU_HWPT_FAULT_ID_VALID is not a paging flag
    ({}, HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING, "not supported together"),
    ({"stages": "s2"}, HWPT_ALLOC_DIRTY_TRACKING, "need stage 1"),  # stage 2: no dirty
    ({"stages": "s1"}, HWPT_ALLOC_NEST_PARENT, "no nesting"),
])
def test_domain_alloc_refusals_are_eopnotsupp(config: dict[str, object], flags: int,
                                              match: str) -> None:
    """arm_smmu_domain_alloc_paging_flags (7.0): ``default: ret = -EOPNOTSUPP``."""
    p = make_platform(kernel="7.0", **config)
    master, _ = p.device()
    with pytest.raises(KernelError, match=match) as exc:
        p.smmu.domain_alloc_paging_flags(master, flags)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert not p.smmu.asids and not p.smmu.vmids
    p.close()


def test_asid_exhaustion_is_ebusy_and_vmid_exhaustion_enospc() -> None:
    p = make_platform(asid_bits=8)
    master, _ = p.device()
    for _ in range(255):
        p.domain(master, attach=False)
    with pytest.raises(KernelError) as exc:
        p.smmu.domain_alloc_paging_flags(master)
    assert exc.value.errno == errno.EBUSY and "255 ASIDs" in str(exc.value)
    p.close()  # every table freed although the last finalise failed after allocating one
    p = make_platform(stages="s2", vmid_bits=8)
    master, _ = p.device()
    for _ in range(255):
        p.domain(master, attach=False)
    with pytest.raises(KernelError) as exc:
        p.smmu.domain_alloc_paging_flags(master)
    assert exc.value.errno == errno.ENOSPC
    p.domains[7].free()
    p.domains.pop(7)
    assert p.domain(master, attach=False).vmid == 8  # the lowest free VMID is reused
    p.close()


def test_domain_alloc_failure_is_enomem_and_allocates_no_tag(plat: Platform) -> None:
    master, _ = plat.device()
    plat.mem.fail_nth.arm(1)
    with pytest.raises(OutOfMemory):
        plat.smmu.domain_alloc_paging_flags(master)
    assert not plat.smmu.asids


# -- attach ----------------------------------------------------------------------------------------
def test_stage1_attach_writes_the_kernels_cd_and_ste(plat: Platform) -> None:
    master, _ = plat.device(0x21)
    before = commands(plat)
    d = plat.domain(master, HWPT_ALLOC_DIRTY_TRACKING)
    assert command_delta(plat, before) == {"CFGI_CD": 2, "CFGI_STE": 2, "CMD_SYNC": 4,
                                    "PREFETCH_CFG": 1}
    assert master.cd_table is not None and d.pgtbl is not None
    cd = [int(w) for w in master.cd_table[:8]]
    # T0SZ 16, TG0 4K, IRGN/ORGN WBWA, SH inner, EPD1, V, IPS 48-bit, AA64, R, A, ASET,
    # HA|HD (dirty tracking), ASID 1: worked out from CTXDESC_CD_0_* by hand.
    assert cd[0] == 0x0001_EE05_C000_3510
    assert cd[1] == d.pgtbl.pgd_pa and cd[3] == d.pgtbl.cfg.arm_lpae_s1_cfg.mair  # type: ignore[union-attr]
    ste = [int(w) for w in plat.smmu.strtab[0x21 * 8:0x22 * 8]]
    assert STE0.decode(ste[0]) == {"V": 1, "CONFIG": 5, "S1FMT": 0,
                                   "S1CTXPTR": master.cd_table_pa, "S1CDMAX": 0}
    assert STE1.decode(ste[1]) == {**{f.name: 0 for f in STE1}, "S1DSS": 2, "S1CIR": 1,
                                   "S1COR": 1, "S1CSH": 3}
    assert ste[2:] == [0] * 6
    plain = plat.domain(plat.device(0x22)[0])
    assert CD0["HA"].get(int(plat.masters[1].cd_table[0])) == 0  # type: ignore[index]
    assert plain.asid == 2


def test_switching_domains_updates_entries_safely_and_flushes_the_old_asid(
        plat7: Platform) -> None:
    plat = plat7
    master, _ = plat.device()
    a = plat.domain(master)
    b = plat.domain(master, attach=False)
    before = commands(plat)
    plat.smmu.attach_dev(b, master)
    # The CD changes ASID and TTB0: a breaking update (V=0, rest, word 0), 3 syncs; the
    # STE is unchanged; A lost its last stream, so its ASID is flushed.
    assert command_delta(plat, before) == {"CFGI_CD": 3, "TLBI_NH_ASID": 1, "CMD_SYNC": 4,
                                    "PREFETCH_CFG": 1}
    assert a.masters == [] and b.masters == [master]
    s2 = plat.domain(master, HWPT_ALLOC_NEST_PARENT, attach=False)
    before = commands(plat)
    plat.smmu.attach_dev(s2, master)
    # S1 -> S2 changes STE words 0 and 2: breaking, 3 syncs; then arm_smmu_clear_cd
    # zeroes CD 0 hitlessly (V first, then the rest: 2 syncs).
    assert command_delta(plat, before) == {"CFGI_STE": 3, "CFGI_CD": 2, "TLBI_NH_ASID": 1,
                                    "CMD_SYNC": 6, "PREFETCH_CFG": 1}
    assert [int(w) for w in master.cd_table[:8]] == [0] * 8  # type: ignore[index]


def test_blocked_and_identity_domains(plat: Platform) -> None:
    master, dev = plat.device()
    buf = plat.buffer(SZ_4K)
    with pytest.raises(DmaFault) as exc:  # a probed device starts blocked
        dev.dma_read(buf, 8)
    assert exc.value.reason == "ABORT" and exc.value.errno == errno.EIO
    plat.smmu.attach_dev(plat.smmu.identity_domain, master)
    assert dev.dma_read(buf, 8) == (buf >> 12).to_bytes(8, "little")
    plat.smmu.attach_dev(plat.smmu.blocked_domain, master)
    with pytest.raises(DmaFault):
        dev.dma_read(buf, 8)
    assert plat.smmu.handle_events() == []  # an abort STE records no event


def test_attach_refuses_a_domain_of_another_smmu(plat: Platform) -> None:
    other = make_platform()
    om, _ = other.device()
    foreign = other.domain(om, attach=False)
    master, _ = plat.device()
    with pytest.raises(KernelError) as exc:
        plat.smmu.attach_dev(foreign, master)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as exc:
        plat.smmu.attach_dev(plat.smmu.blocked_domain, om)
    assert exc.value.errno == errno.EINVAL
    other.close()


def test_cd_table_allocation_failure_leaves_the_stream_blocked(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master, attach=False)
    plat.mem.fail_nth.arm(1)
    with pytest.raises(OutOfMemory):
        plat.smmu.attach_dev(d, master)
    assert master.domain is None and d.masters == []
    assert STE0["CONFIG"].get(int(plat.smmu.strtab[0x10 * 8])) == 0  # still abort
    plat.smmu.attach_dev(d, master)


# -- invalidation commands -------------------------------------------------------------------------
def _last_tlbis(p: Platform, n: int) -> list[tuple[str, int, int]]:
    return [(cmd.name, w0, w1) for cmd, w0, w1 in list(p.hw.recent_commands)[-n:]]


def test_unmap_invalidates_by_range_with_the_leaf_level(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master)
    d.map(0x10_0000_0000, 0x8000_0000, SZ_2M, RW)
    d.map(0x10_0020_0000, 0x9000_0000, 3 * SZ_4K, RW)
    d.unmap(0x10_0020_0000, 3 * SZ_4K)
    (op, w0, w1), (sync, _, _) = _last_tlbis(plat, 2)
    assert (op, sync) == ("TLBI_NH_VA", "CMD_SYNC")
    assert w0 >> 48 == d.asid and (w0 >> 12) & 0x1F == 2 and w1 == 0x10_0020_0000 | 0x701
    d.unmap(0x10_0000_0000, SZ_2M)
    (op, w0, w1), _ = _last_tlbis(plat, 2)
    assert op == "TLBI_NH_VA" and (w1 >> 8) & 3 == 2  # TTL 2: a level-2 (2M) leaf
    d.flush_iotlb_all()
    assert _last_tlbis(plat, 2)[0][:2] == ("TLBI_NH_ASID", d.asid << 48 | 0x11)


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_stage2_uses_ipa_and_vmall(kernel: str) -> None:
    plat = make_platform(kernel=kernel, stages="s2")
    master, _ = plat.device()
    d = plat.domain(master)
    d.map(SZ_1G, 0x8000_0000, SZ_4K, RW)
    d.unmap(SZ_1G, SZ_4K)
    (op, w0, w1), _ = _last_tlbis(plat, 2)
    assert op == "TLBI_S2_IPA" and (w0 >> 32) & 0xFFFF == d.vmid and w1 & ~0xFFF == SZ_1G
    d.flush_iotlb_all()
    assert _last_tlbis(plat, 2)[0][0] == "TLBI_S12_VMALL"
    plat.close()


def test_without_ril_large_ranges_become_one_asid_invalidation() -> None:
    """arm_smmu_inv_size_too_big (7.0): MAX_TLBI_OPS per-granule commands or more become
    the whole-context command."""
    p = make_platform(ril=False, kernel="7.0")
    master, _ = p.device()
    d = p.domain(master)
    d.map(0, 0x8000_0000, SZ_2M, RW)
    d.unmap(0, SZ_2M)  # one block: one command at 2M granule
    assert _last_tlbis(p, 2)[0][0] == "TLBI_NH_VA"
    d.map(0, 0x8000_1000, SZ_2M, RW)  # unaligned PA: a table of 512 pages
    d.unmap(0, SZ_2M)
    # The table goes at once: its walk flush would take 512 per-page commands, so it is
    # one ASID invalidation; then the gathered 2M entry is invalidated at 2M granule.
    assert [c[0] for c in _last_tlbis(p, 4)] == ["TLBI_NH_ASID", "CMD_SYNC", "TLBI_NH_VA",
                                                 "CMD_SYNC"]
    d.map(SZ_1G, 0x9000_0000, 300 * SZ_4K, RW)
    before = commands(p)
    d.unmap(SZ_1G, 300 * SZ_4K)
    # 300 per-page commands in batches of 64; only the last batch ends with a CMD_SYNC.
    assert command_delta(p, before) == {"TLBI_NH_VA": 300, "CMD_SYNC": 1}
    p.close()


def test_unattached_domains_send_no_invalidations(plat7: Platform) -> None:
    """7.0: an unattached domain's invalidation array is empty."""
    plat = plat7
    master, _ = plat.device()
    d = plat.domain(master, attach=False)
    before = commands(plat)
    d.map(0, 0x8000_0000, SZ_2M, RW)
    d.unmap(0, SZ_2M)
    d.flush_iotlb_all()
    assert command_delta(plat, before) == {}
    assert d.tlb_stats.iotlb_sync == 1 and d.tlb_stats.flush_all == 1  # the calls happened


def test_an_illegal_command_is_skipped_and_the_queue_resumes(plat: Platform) -> None:
    plat.smmu.issue([(0xFF, 0)], sync=True)
    assert plat.hw.stats.commands["ILLEGAL"] == 1
    assert any("Illegal command" in line for line in plat.smmu.log)
    assert not plat.hw.cmdq_error
    assert plat.hw.read_reg(Reg.CMDQ_CONS) == plat.smmu.cmdq_prod  # everything consumed
    before = commands(plat)
    plat.smmu.issue([], sync=True)
    assert command_delta(plat, before) == {"CMD_SYNC": 1}


def test_remove_refuses_while_devices_or_domains_remain(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master)
    with pytest.raises(KernelError, match="still attached to StreamIDs 0x10") as exc:
        d.free()
    assert exc.value.errno == errno.EBUSY and d.pgtbl is not None and d.ops is not None
    with pytest.raises(KernelError) as exc:
        plat.smmu.remove()
    assert exc.value.errno == errno.EBUSY and "0x10" in str(exc.value)


# -- fault injection ----------------------------------------------------------------------------
class _Setup:
    """A domain's life in steps, for the fail-nth sweep."""

    STEPS = ("alloc", "attach", "map", "split")

    def __init__(self, p: Platform) -> None:
        self.p = p
        self.master, _ = p.device()
        self.d: ArmSmmuDomain | None = None

    def alloc(self) -> None:
        self.d = self.p.domain(self.master, HWPT_ALLOC_DIRTY_TRACKING, attach=False)

    def attach(self) -> None:
        assert self.d is not None
        self.p.smmu.attach_dev(self.d, self.master)

    def map(self) -> None:
        assert self.d is not None
        self.d.map(0x40_0000_0000, 0x8000_0000, 4 * SZ_2M + 3 * SZ_4K, RW)

    def split(self) -> None:
        assert self.d is not None
        self.d.set_dirty_tracking(True, granule=SZ_4K)

    def snapshot(self) -> tuple[object, ...]:
        leaves = None
        if self.d is not None and self.d.pgtbl is not None:
            leaves = [e for e in self.d.pgtbl.iter_entries() if e[2]]
            self.d.pgtbl._check()  # tables left on the way down are reachable, not leaked
        return leaves, dict(self.p.smmu.asids), self.master.domain, \
            self.d.dirty_granule if self.d else None


def test_fail_nth_sweep_over_domain_setup() -> None:
    """Fail each allocation of alloc, attach, map and split in turn: ENOMEM, no change."""
    failures: Counter[str] = Counter()
    for index, step in enumerate(_Setup.STEPS):
        nth = 1
        while True:
            p = make_platform(ram="1G")
            setup = _Setup(p)
            for earlier in _Setup.STEPS[:index]:
                getattr(setup, earlier)()
            before = setup.snapshot()
            p.mem.fail_nth.arm(nth)
            try:
                getattr(setup, step)()
            except OutOfMemory:
                failures[step] += 1
                assert p.mem.fail_nth.triggered
                assert setup.snapshot() == before, f"{step} changed state at fail-nth {nth}"
                nth += 1
            else:
                nth = 0
            p.mem.fail_nth.disarm()
            p.close()
            if not nth:
                break
    assert all(failures[step] for step in _Setup.STEPS), failures


@pytest.mark.parametrize("target", ["blocked", "identity"])
def test_blocked_and_identity_attach_clear_cd_0(plat: Platform, target: str) -> None:
    """arm_smmu_attach_dev_ste ends with arm_smmu_clear_cd(master, IOMMU_NO_PASID): the
    stage-1 CD a device had is zeroed (V first), so nothing can walk with it later."""
    master, _ = plat.device()
    plat.domain(master)
    before = commands(plat)
    domain = plat.smmu.blocked_domain if target == "blocked" else plat.smmu.identity_domain
    plat.smmu.attach_dev(domain, master)
    assert command_delta(plat, before)["CFGI_CD"] == 2
    assert [int(w) for w in master.cd_table[:8]] == [0] * 8  # type: ignore[index]
