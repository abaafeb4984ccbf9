"""The SMMUv3 hardware model: walks from memory, HTTU, faults and the event queue."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.drivers.smmuv3 import (
    HWPT_ALLOC_DIRTY_TRACKING,
    HWPT_ALLOC_NEST_PARENT,
    IotlbConfig,
)
from iommulab.drivers.smmuv3.regs import Reg
from iommulab.errors import DmaFault
from iommulab.pgtable import IoPgtable
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

from .platform import RW, Platform, make_platform

AF, AP_RDONLY, S1_AP_UNPRIV = 1 << 10, 1 << 7, 1 << 6


def _leaf_pa(p: Platform, pgtbl: IoPgtable, iova: int) -> int:
    """Physical address of the leaf descriptor for ``iova`` (from the software walk)."""
    walk = pgtbl.pgtable_walk(iova)
    table_pa = pgtbl.pgd_pa if len(walk) == 1 else walk[-2] & 0xFFFF_FFFF_F000
    level = pgtbl.format.levels[len(walk) - 1]
    return table_pa + ((iova >> level.shift) & level.index_mask) * 8


def _fault(p: Platform, sid: int, iova: int, access: int = Prot.READ) -> str:
    with pytest.raises(DmaFault) as exc:
        p.hw.translate(sid, iova, access)
    assert exc.value.sid == sid and exc.value.iova == iova
    assert exc.value.write == bool(access & Prot.WRITE)
    return exc.value.reason


def test_a_miss_walks_memory_and_a_hit_does_not(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master)
    buf = plat.buffer(SZ_2M)
    d.map(0x1000_0000, buf, SZ_2M, RW)
    d.map(0x2000_0000, buf, SZ_4K, Prot.READ)
    hw = plat.hw
    assert hw.translate(0x10, 0x1000_0123) == buf + 0x123
    assert (hw.stats.walks, hw.stats.descriptor_reads) == (1, 3)  # L0, L1, then the block
    assert hw.translate(0x10, 0x101F_FFFF, Prot.WRITE) == buf + SZ_2M - 1
    assert hw.stats.walks == 1 and hw.iotlb.stats.hits == 1
    assert hw.translate(0x10, 0x2000_0008) == buf + 8
    assert hw.stats.descriptor_reads == 3 + 4  # a 4K page: four levels
    assert hw.stats.config_misses == 1 and hw.stats.config_hits == 2


def test_fault_kinds_are_queued_as_events() -> None:
    p = make_platform(httu="none")
    master, _ = p.device(0x33)
    d = p.domain(master)
    buf = p.buffer(SZ_4K)
    d.map(0x1000, buf, SZ_4K, Prot.READ)
    d.map(0x2000, buf, SZ_4K, RW | Prot.PRIV)
    assert _fault(p, 0x33, 0x5000) == "F_TRANSLATION"  # nothing mapped
    assert _fault(p, 0x33, 0x1000, Prot.WRITE) == "F_PERMISSION"  # read-only
    assert _fault(p, 0x33, 0x2000) == "F_PERMISSION"  # privileged-only, unprivileged access
    assert p.hw.translate(0x33, 0x2000, Prot.READ | Prot.PRIV) == buf
    assert _fault(p, 0x33, 1 << 48) == "F_TRANSLATION"  # beyond the input size
    assert d.pgtbl is not None
    leaf = _leaf_pa(p, d.pgtbl, 0x1000)
    p.mem.write_u64(leaf, p.mem.read_u64(leaf) & ~AF)  # software cleared the access flag
    p.smmu.domain_inv_range(d, 0x1000, SZ_4K, SZ_4K, leaf=True)
    assert _fault(p, 0x33, 0x1000) == "F_ACCESS"  # no HTTU: AF=0 faults
    events = p.smmu.handle_events()
    assert [(e.name, e.sid, e.iova, e.read) for e in events] == [
        ("F_TRANSLATION", 0x33, 0x5000, True), ("F_PERMISSION", 0x33, 0x1000, False),
        ("F_PERMISSION", 0x33, 0x2000, True), ("F_TRANSLATION", 0x33, 1 << 48, True),
        ("F_ACCESS", 0x33, 0x1000, True)]
    assert all(not e.s2 for e in events)
    assert p.hw.read_reg(Reg.EVTQ_CONS) == p.hw.read_reg(Reg.EVTQ_PROD)
    p.close()


def test_hardware_sets_the_access_flag_when_it_may(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master, HWPT_ALLOC_DIRTY_TRACKING)  # only then does the CD set HA
    buf = plat.buffer(SZ_4K)
    d.map(0x1000, buf, SZ_4K, RW)
    assert d.pgtbl is not None
    leaf = _leaf_pa(plat, d.pgtbl, 0x1000)
    plat.mem.write_u64(leaf, plat.mem.read_u64(leaf) & ~AF)
    assert plat.hw.translate(0x10, 0x1000) == buf
    assert plat.mem.read_u64(leaf) & AF and plat.hw.stats.af_updates == 1


def test_address_size_fault_for_an_output_beyond_the_ips() -> None:
    p = make_platform(oas=40)
    master, _ = p.device()
    d = p.domain(master)
    d.map(0x1000, 0x8000_0000, SZ_4K, RW)
    assert d.pgtbl is not None
    leaf = _leaf_pa(p, d.pgtbl, 0x1000)
    p.mem.write_u64(leaf, p.mem.read_u64(leaf) | 1 << 44)  # OA bit 44, beyond 40 bits
    assert _fault(p, 0x10, 0x1000) == "F_ADDR_SIZE"
    assert [e.name for e in p.smmu.handle_events()] == ["F_ADDR_SIZE"]
    p.close()


def test_stage2_faults_carry_the_ipa(plat7: Platform) -> None:
    plat = plat7  # a stage-2 nest parent is 7.0's
    master, _ = plat.device()
    d = plat.domain(master, HWPT_ALLOC_NEST_PARENT)
    d.map(SZ_1G, 0x8000_0000, SZ_4K, Prot.READ)
    assert plat.hw.translate(0x10, SZ_1G + 4) == 0x8000_0004
    assert _fault(plat, 0x10, SZ_1G, Prot.WRITE) == "F_PERMISSION"
    (event,) = plat.smmu.handle_events()
    assert event.s2 and event.ipa == SZ_1G and not event.read


def test_event_queue_overflow_loses_events_and_is_reported() -> None:
    p = make_platform(evtq_shift=1)  # two entries
    master, _ = p.device()
    p.domain(master)
    for iova in (0x1000, 0x2000, 0x3000):
        _fault(p, 0x10, iova)
    assert p.hw.stats.events_recorded == 2 and p.hw.stats.events_lost == 1
    assert [e.iova for e in p.smmu.handle_events()] == [0x1000, 0x2000]
    assert "EVTQ overflow detected -- events lost" in p.smmu.log
    _fault(p, 0x10, 0x4000)
    assert [e.iova for e in p.smmu.handle_events()] == [0x4000]
    p.close()


def test_httu_marks_dirty_once_and_the_iotlb_may_cache_it(plat: Platform) -> None:
    master, dev = plat.device()
    d = plat.domain(master, HWPT_ALLOC_DIRTY_TRACKING)
    buf = plat.buffer(SZ_4K)
    d.map(0x1000, buf, SZ_4K, RW)
    d.read_and_clear_dirty(0x1000, SZ_4K)  # fresh writable mappings start dirty
    assert d.pgtbl is not None
    leaf = _leaf_pa(plat, d.pgtbl, 0x1000)
    assert plat.mem.read_u64(leaf) & AP_RDONLY  # writable-clean
    dev.dma_write(0x1000, b"a")
    assert not plat.mem.read_u64(leaf) & AP_RDONLY and plat.hw.stats.dirty_updates == 1
    walks = plat.hw.stats.walks
    dev.dma_write(0x1001, b"b")  # a dirty entry in the IOTLB: no descriptor access
    assert plat.hw.stats.walks == walks and plat.hw.stats.dirty_updates == 1


def test_config_is_cached_until_invalidated(plat: Platform) -> None:
    master, _ = plat.device()
    d = plat.domain(master)
    d.map(0x1000, 0x8000_0000, SZ_4K, RW)
    assert plat.hw.translate(0x10, 0x1000) == 0x8000_0000
    ste = plat.smmu.strtab_pa + 0x10 * 64
    plat.mem.write_u64(ste, 0)  # V=0 behind the driver's back
    plat.hw.iotlb.invalidate_all("test")
    assert plat.hw.translate(0x10, 0x1000) == 0x8000_0000  # the cached STE still serves
    plat.smmu.issue([(0x3 | 0x10 << 32, 1)])  # CFGI_STE for SID 0x10
    assert _fault(plat, 0x10, 0x1000) == "C_BAD_STE"
    plat.smmu.attach_dev(plat.smmu.blocked_domain, master)  # a valid STE again for close()


def test_disabled_smmu_passes_everything_through(plat: Platform) -> None:
    plat.hw.write_reg(Reg.CR0, 0)
    assert plat.hw.translate(0x99, 0x1234_5678) == 0x1234_5678


# -- the hardware walker and io-pgtable agree ------------------------------------------------
_mapping = st.tuples(st.integers(0, 63), st.sampled_from([SZ_4K, SZ_2M, SZ_1G]),
                     st.sampled_from([Prot.READ, RW]))


@settings(max_examples=30, deadline=None)
@given(maps=st.lists(_mapping, max_size=8, unique_by=lambda m: m[0]),
       stage=st.sampled_from([0, HWPT_ALLOC_NEST_PARENT]),
       probes=st.lists(st.integers(0, 64 * SZ_1G - 1), min_size=1, max_size=20))
def test_hardware_walk_agrees_with_iova_to_phys(maps: list[tuple[int, int, Prot]],
                                                stage: int, probes: list[int]) -> None:
    """Whatever io-pgtable wrote, the SMMU's own walk reads the same translation."""
    p = make_platform(iotlb=IotlbConfig.tiny(), kernel="7.0")  # evictions: most probes walk
    master, _ = p.device()
    d = p.domain(master, stage)
    for slot, size, prot in maps:  # one mapping per 1G slot
        iova = slot * SZ_1G + (3 * size if size < SZ_1G else 0)
        d.map(iova, (64 + slot) * SZ_1G + iova % SZ_1G, size, prot)
    for iova in probes + [s * SZ_1G + 3 * SZ_2M + 5 for s, _, _ in maps]:
        for access in (Prot.READ, Prot.WRITE):
            want = d.iova_to_phys(iova)
            try:
                got = p.hw.translate(0x10, iova, access)
            except DmaFault as fault:
                assert not want or (access == Prot.WRITE and fault.reason == "F_PERMISSION")
            else:
                assert got == want, (hex(iova), hex(got), hex(want))
    p.close()
