"""Nested (stage 1 + stage 2) translation in the SMMUv3 model: walks, faults, caches.

Each fault kind, each invalidation command, the substream cases and stage-2
HTTU, on a stream whose STE is built by make_nested_domain_ste over a 7.0
nest-parent stage-2 domain (see nested_env).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommulab import Prot
from iommulab.drivers.smmuv3 import SmmuEvent, make_nested_domain_ste, validate_vste
from iommulab.drivers.smmuv3.cmds import cfgi_cd, cfgi_ste
from iommulab.drivers.smmuv3.nested import STE0_NESTING_ALLOWED, STE1_NESTING_ALLOWED
from iommulab.drivers.smmuv3.regs import (
    CD0,
    CMD_CFGI0,
    CMD_CFGI_ALL1,
    EVT_CLASS_CD,
    EVT_CLASS_IN,
    EVT_CLASS_TT,
    STE0,
    STE1,
    STE2,
    Cmd,
    SteConfig,
)
from iommulab.errors import DmaFault, KernelError
from iommulab.sizes import SZ_4K

from .nested_env import (
    AF,
    ASID,
    DATA_IPA,
    GRAM_IPA,
    S2AP_W,
    SID,
    STE2_S2HA,
    STE2_S2HD,
    STE2_S2R,
    STE2_S2S,
    NestedEnv,
)
from .platform import RW, Platform, make_platform

W = Prot.WRITE
PAGE3 = DATA_IPA + 3 * SZ_4K


@pytest.fixture
def env(plat7: Platform) -> Iterator[NestedEnv]:
    e = NestedEnv(plat7)
    yield e
    e.close()


def _pa(e: NestedEnv, pool: int, off: int = 0) -> int:
    return e.pool_pa + pool * SZ_4K + off


def _fault(e: NestedEnv, iova: int, access: int = Prot.READ, ssid: int = -1
           ) -> SmmuEvent | str:
    """The event the fault queued (or the reason, when none was recorded)."""
    with pytest.raises(DmaFault) as exc:
        e.plat.hw.translate_run(SID, iova, bool(access & W), False, ssid)
    events = e.plat.smmu.handle_events()
    assert len(events) <= 1
    if not events:
        return exc.value.reason
    assert events[0].name == exc.value.reason and events[0].iova == iova
    return events[0]


def _event(e: NestedEnv, iova: int, access: int = Prot.READ, ssid: int = -1) -> SmmuEvent:
    ev = _fault(e, iova, access, ssid)
    assert isinstance(ev, SmmuEvent)
    return ev


# -- the walk ------------------------------------------------------------------------------
def test_nested_walk_composes_both_stages_and_caches_one_combined_entry(env: NestedEnv
                                                                         ) -> None:
    hw = env.plat.hw
    env.s1_map(0x1000, PAGE3)
    env.s1_map(0x2000, DATA_IPA + 5 * SZ_4K)
    assert hw.translate(SID, 0x1234) == _pa(env, 3, 0x234)
    # CD: one S2 walk (4 reads) + 2 CD words; S1: 4 levels, each table page's IPA walked
    # at S2 (4 + 1 reads); the output IPA: one more S2 walk (4)
    assert hw.stats.descriptor_reads == 4 + 4 * 5 + 4
    (combined,) = [t for t in hw.iotlb.entries() if t.tag & 1]
    assert (combined.va, combined.pa, combined.shift) == (0x1000, _pa(env, 3), 12)
    reads = hw.stats.descriptor_reads
    assert hw.translate(SID, 0x1FFF, W) == _pa(env, 3, 0xFFF)  # a hit
    assert hw.stats.descriptor_reads == reads
    assert hw.translate(SID, 0x2008) == _pa(env, 5, 8)  # tables' S2 entries cached
    assert hw.stats.descriptor_reads == reads + 4 + 4


def test_a_combined_entry_has_the_smaller_leaf_of_the_two_stages(env: NestedEnv) -> None:
    hw = env.plat.hw
    block_ipa, block_pa = 0xC000_0000, env.plat.buffer(1 << 22, fill=False) + (1 << 21)
    env.s2.map(block_ipa, block_pa, 1 << 21, RW)
    assert env.s2.pgtbl is not None and len(env.s2.pgtbl.pgtable_walk(block_ipa)) == 3  # 2M
    cases = [(0x20_0000, DATA_IPA, _pa(env, 0), 12),  # S1 2M block over S2 4K pages
             (0x40_0000, block_ipa, block_pa, 21)]  # S1 2M block over S2 2M block
    for iova, ipa, _, _ in cases:
        env.s1_map_2m(iova, ipa)
    env.s1_map(0x1000, block_ipa + 5 * SZ_4K)  # S1 4K page over an S2 2M block
    cases.append((0x1000, block_ipa + 5 * SZ_4K, block_pa + 5 * SZ_4K, 12))
    for iova, _, pa, shift in cases:
        assert hw.translate(SID, iova + 0x18) == pa + 0x18
        (e,) = [t for t in hw.iotlb.entries()
                if t.tag & 1 and t.va <= iova < t.va + (1 << t.shift)]
        assert (e.shift, e.pa) == (shift, pa)
    assert hw.translate(SID, 0x40_0000 + 0x1F_FFF0) == block_pa + 0x1F_FFF0  # a hit
    hw._check()


def test_a_nested_stream_with_a_bypass_vste_is_stage_2_only(plat7: Platform) -> None:
    e = NestedEnv(plat7)
    s2cfg = e.s2.pgtbl.cfg.arm_lpae_s2_cfg if e.s2.pgtbl else None
    assert s2cfg is not None
    plat7.smmu._write_ste(SID, make_nested_domain_ste(
        (STE0.encode(V=1, CONFIG=SteConfig.BYPASS), 0), s2cfg, e.vmid))
    assert plat7.hw.translate(SID, PAGE3 + 8) == _pa(e, 3, 8)
    e.s2_set(3, None)
    e.issue(e.s2_ipa(PAGE3))
    ev = _event(e, PAGE3 + 8)
    assert ev.s2 and ev.ipa == PAGE3 and ev.klass == EVT_CLASS_IN
    e.close()


# -- faults -------------------------------------------------------------------------------
def test_stage1_faults_have_s2_clear(env: NestedEnv) -> None:
    ev = _event(env, 0x7000)  # nothing mapped at stage 1
    assert (ev.name, ev.s2, ev.ipa, ev.klass) == ("F_TRANSLATION", False, 0, EVT_CLASS_IN)
    env.s1_map(0x1000, PAGE3, writable=False)
    ev = _event(env, 0x1000, W)
    assert (ev.name, ev.s2, ev.read) == ("F_PERMISSION", False, False)
    env.s1_map(0x3000, PAGE3, af=False)  # no CD.HA
    assert _event(env, 0x3000).name == "F_ACCESS"


def test_stage1_address_size_fault_beyond_cd_ips(plat7: Platform) -> None:
    cd0 = CD0.encode(T0SZ=16, TG0=0, EPD1=1, V=1, IPS=2, AA64=1, R=1, A=1, ASET=1, ASID=ASID)
    e = NestedEnv(plat7, cd_words0=cd0)  # IPS 40 bits
    e.s1_map(0x1000, 1 << 41)
    ev = _event(e, 0x1000)
    assert (ev.name, ev.s2) == ("F_ADDR_SIZE", False)
    e.close()


def test_stage2_faults_on_the_output_ipa_carry_it_with_class_in(env: NestedEnv) -> None:
    env.s1_map(0x1000, PAGE3)
    env.s2_set(3, None)
    ev = _event(env, 0x1010)
    assert (ev.name, ev.s2, ev.ipa, ev.klass) == ("F_TRANSLATION", True, PAGE3, EVT_CLASS_IN)
    env.s2_set(3, 3, writable=False)
    assert env.plat.hw.translate(SID, 0x1010) == _pa(env, 3, 0x10)
    ev = _event(env, 0x1010, W)
    assert (ev.name, ev.s2, ev.ipa, ev.klass, ev.read) == (
        "F_PERMISSION", True, PAGE3, EVT_CLASS_IN, False)
    env.s1_map(0x2000, DATA_IPA + 7 * SZ_4K)
    env.s2_set(7, 7, af=False)  # no S2HA
    ev = _event(env, 0x2000)
    assert (ev.name, ev.s2, ev.ipa) == ("F_ACCESS", True, DATA_IPA + 7 * SZ_4K)


def test_stage2_address_size_and_input_range_faults() -> None:
    p = make_platform(kernel="7.0", oas=40)  # S2PS and the S2 input size: 40 bits
    e = NestedEnv(p)
    e.s1_map(0x1000, PAGE3)
    leaf = e.s2_leaf_pa(3)
    p.mem.write_u64(leaf, p.mem.read_u64(leaf) | 1 << 44)  # OA beyond S2PS
    ev = _event(e, 0x1000)
    assert (ev.name, ev.s2, ev.ipa, ev.klass) == ("F_ADDR_SIZE", True, PAGE3, EVT_CLASS_IN)
    e.s1_map(0x3000, 1 << 41)  # within the CD's 48-bit IPS, beyond the S2 input range
    ev = _event(e, 0x3000)
    assert (ev.name, ev.s2, ev.ipa) == ("F_TRANSLATION", True, 1 << 41)
    e.close()
    p.close()


def test_stage2_fault_on_a_stage1_table_fetch_is_class_tt(env: NestedEnv) -> None:
    table_ipa = 0x9000_0000  # not mapped by the host
    env.gwrite(env.pgd + 8, table_ipa | 3)  # level-0 slot 1: iova 512 GiB...
    iova = 1 << 39
    ev = _event(env, iova)
    assert (ev.name, ev.s2, ev.ipa, ev.klass, ev.ttrnw) == (
        "F_TRANSLATION", True, table_ipa, EVT_CLASS_TT, True)


def test_stage2_fault_on_the_cd_fetch_is_class_cd(env: NestedEnv) -> None:
    env.s1_map(0x1000, PAGE3)
    env.plat.hw.translate(SID, 0x1000)
    assert env.s2.unmap(GRAM_IPA, SZ_4K) == SZ_4K  # the CD's page, invalidated by the driver
    env.plat.hw.translate(SID, 0x1000)  # the configuration is still cached
    env.issue(cfgi_ste(SID))
    ev = _event(env, 0x1000)
    assert (ev.name, ev.s2, ev.ipa, ev.klass) == ("F_TRANSLATION", True, GRAM_IPA,
                                                 EVT_CLASS_CD)


def test_s2r_and_cd_r_decide_what_is_recorded(plat7: Platform) -> None:
    e = NestedEnv(plat7, s2_clear=STE2_S2R)
    e.s1_map(0x1000, PAGE3)
    e.s2_set(3, None)
    assert _fault(e, 0x1000) == "F_TRANSLATION"  # a stage-2 fault, not recorded
    assert _event(e, 0x2000).s2 is False  # a stage-1 fault, CD.R = 1: recorded
    e.close()
    cd0 = CD0.encode(T0SZ=16, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, A=1, ASET=1, ASID=ASID)
    e = NestedEnv(plat7, cd_words0=cd0)  # CD.R = 0
    e.s2.unmap(DATA_IPA + 9 * SZ_4K, SZ_4K)
    e.s1_map(0x1000, DATA_IPA + 9 * SZ_4K)
    assert _fault(e, 0x2000) == "F_TRANSLATION"
    assert _event(e, 0x1000).s2 is True
    e.close()


def test_stall_bits_follow_s2s_cd_s_and_s1stalld() -> None:
    p = make_platform(kernel="7.0", stall_model=0)
    e = NestedEnv(p, s2_extra=STE2_S2S)
    e.s1_map(0x1000, PAGE3)
    e.s2_set(3, None)
    ev = _event(e, 0x1000)
    assert ev.s2 and ev.stall and ev.stag
    ev = _event(e, 0x2000)  # stage 1, CD.S = 0: terminated
    assert not ev.s2 and not ev.stall
    e.close()
    cd0 = CD0.encode(T0SZ=16, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1, ASET=1,
                     ASID=ASID, S=1)
    e = NestedEnv(p, cd_words0=cd0, ste1_extra=STE1["S1STALLD"].mask)
    assert _event(e, 0x1000).name == "C_BAD_CD"  # CD.S with S1STALLD: ILLEGAL
    e.close()
    p.close()
    p = make_platform(kernel="7.0")  # STALL_MODEL 1: no stalls
    e = NestedEnv(p, s2_extra=STE2_S2S)
    assert _event(e, 0x1000).name == "C_BAD_STE"
    e.close()
    p.close()


# -- substreams ----------------------------------------------------------------------------
@pytest.mark.parametrize("s1fmt", [0, 1])
def test_substreams_select_cds_through_stage2(s1fmt: int) -> None:
    p = make_platform(kernel="7.0", ssid_bits=8, cd2l=True)
    e = NestedEnv(p, cdmax=8, s1fmt=s1fmt, s1dss=2, ssids=(0, 1, 70))
    e.s1_map(0x1000, PAGE3)
    hw = p.hw
    for ssid in (-1, 1, 70):  # without an SSID: CD 0 (S1DSS = 0b10)
        assert hw.translate_run(SID, 0x1000, False, ssid=ssid)[0] == _pa(e, 3)
    assert _event(e, 0x1000, ssid=0).name == "C_BAD_SUBSTREAMID"  # SSID 0 with S1DSS 0b10
    ev = _event(e, 0x1000, ssid=256)  # beyond S1CDMax
    assert (ev.name, ev.ssv, ev.ssid) == ("C_BAD_SUBSTREAMID", True, 256)
    if s1fmt:
        assert _event(e, 0x1000, ssid=130).name == "C_BAD_SUBSTREAMID"  # L1CD not valid
    assert _event(e, 0x1000, ssid=2).name == "C_BAD_CD"  # a zero CD
    e.close()
    p.close()


@pytest.mark.parametrize(("s1dss", "want"), [(0, "F_STREAM_DISABLED"), (1, "bypass")])
def test_s1dss_for_transactions_without_a_substream(s1dss: int, want: str) -> None:
    p = make_platform(kernel="7.0", ssid_bits=4)
    e = NestedEnv(p, cdmax=4, s1dss=s1dss, ssids=(1,))
    if want == "bypass":  # stage 1 skipped; stage 2 still translates
        assert p.hw.translate(SID, PAGE3 + 4) == _pa(e, 3, 4)
    else:
        assert _event(e, PAGE3).name == want
    e.close()
    p.close()


def test_a_cdmax_beyond_ssidsize_is_an_illegal_ste(plat7: Platform) -> None:
    e = NestedEnv(plat7, cdmax=4, ssids=(1,))  # SSIDSIZE 0
    assert _event(e, 0x1000).name == "C_BAD_STE"
    e.close()


# -- invalidation --------------------------------------------------------------------------
def _warm(e: NestedEnv, *iovas: int) -> None:
    for i, iova in enumerate(iovas):
        e.s1_map(iova, DATA_IPA + i * SZ_4K)
        assert e.plat.hw.translate(SID, iova) == _pa(e, i)


def _remap_s1(e: NestedEnv, *iovas: int) -> None:
    for i, iova in enumerate(iovas):
        e.s1_map(iova, DATA_IPA + (10 + i) * SZ_4K)


def _fresh(e: NestedEnv, iova: int, i: int) -> bool:
    """Whether ``iova`` (the i-th of _warm) now reads its remapped page."""
    got = e.plat.hw.translate(SID, iova)
    assert got in (_pa(e, i), _pa(e, 10 + i))
    return got == _pa(e, 10 + i)


def test_without_invalidation_the_combined_entry_is_stale(env: NestedEnv) -> None:
    _warm(env, 0x1000)
    _remap_s1(env, 0x1000)
    assert not _fresh(env, 0x1000, 0)


def test_tlbi_nh_va_removes_one_address_of_one_asid(env: NestedEnv) -> None:
    _warm(env, 0x1000, 0x2000)
    _remap_s1(env, 0x1000, 0x2000)
    env.issue(env.nh_va(0x1000, asid=ASID + 1))  # another ASID: nothing
    assert not _fresh(env, 0x1000, 0)
    env.issue(env.nh_va(0x1000))
    assert _fresh(env, 0x1000, 0) and not _fresh(env, 0x2000, 1)


def test_tlbi_nh_vaa_removes_the_address_of_every_asid(env: NestedEnv) -> None:
    _warm(env, 0x1000, 0x2000)
    _remap_s1(env, 0x1000, 0x2000)
    env.issue(env.nh_vaa(0x2000))
    assert _fresh(env, 0x2000, 1) and not _fresh(env, 0x1000, 0)


@pytest.mark.parametrize("which", ["nh_asid", "nh_all", "s12_vmall"])
def test_context_invalidations_remove_every_combined_entry(env: NestedEnv, which: str
                                                           ) -> None:
    _warm(env, 0x1000, 0x2000)
    _remap_s1(env, 0x1000, 0x2000)
    env.issue(getattr(env, which)())
    assert _fresh(env, 0x1000, 0) and _fresh(env, 0x2000, 1)


def test_tlbi_nh_asid_of_another_asid_or_vmid_keeps_them(env: NestedEnv) -> None:
    _warm(env, 0x1000)
    _remap_s1(env, 0x1000)
    env.issue(env.nh_asid(ASID + 1))
    assert not _fresh(env, 0x1000, 0)


def _move_s2(e: NestedEnv) -> None:
    """Host: the IPA of data page 0 moves from pool page 0 to pool page 10."""
    _warm(e, 0x1000)
    e.s2_set(0, 10)


def test_tlbi_s2_ipa_alone_leaves_the_combined_entry(env: NestedEnv) -> None:
    _move_s2(env)
    env.issue(env.s2_ipa(DATA_IPA))
    assert not _fresh(env, 0x1000, 0)  # IHI 0070: combined entries need not go
    assert not any(t.tag & 1 == 0 and t.va == DATA_IPA for t in env.plat.hw.iotlb.entries())


def test_tlbi_nh_all_alone_rewalks_through_the_stale_stage2_entry(env: NestedEnv) -> None:
    _move_s2(env)
    env.issue(env.nh_all())
    assert not _fresh(env, 0x1000, 0)


def test_nh_all_before_s2_ipa_lets_a_walk_rebuild_a_stale_combined_entry(env: NestedEnv
                                                                          ) -> None:
    _move_s2(env)
    env.issue(env.nh_all())
    assert not _fresh(env, 0x1000, 0)  # walked: S1 afresh, the output IPA's stale S2 entry
    env.issue(env.s2_ipa(DATA_IPA))
    assert not _fresh(env, 0x1000, 0)  # the combined entry built in between remains
    env.issue(env.nh_all())
    assert _fresh(env, 0x1000, 0)


def test_tlbi_s2_ipa_then_nh_all_or_s12_vmall_is_enough(env: NestedEnv) -> None:
    _move_s2(env)
    env.issue(env.s2_ipa(DATA_IPA), env.nh_all())
    assert _fresh(env, 0x1000, 0)
    env.s2_set(0, 0)
    env.issue(env.s12_vmall())
    assert env.plat.hw.translate(SID, 0x1000) == _pa(env, 0)


def test_the_driver_invalidates_a_nest_parent_for_its_nested_entries(env: NestedEnv) -> None:
    """Linux 7.0 follows a nest parent's S2_IPA with NH_ALL of its VMID."""
    _warm(env, 0x1000)
    assert env.s2.unmap(DATA_IPA, SZ_4K) == SZ_4K
    assert _event(env, 0x1000).s2


def test_cfgi_cd_refetches_the_cd_and_the_asid_needs_its_tlbi(env: NestedEnv) -> None:
    _warm(env, 0x1000)
    old_pgd = env.pgd
    env.pgd = env._alloc_table()  # the guest builds a new table for the same ASID
    env.s1_map(0x1000, DATA_IPA + 10 * SZ_4K)
    env.s1_map(0x2000, DATA_IPA + 11 * SZ_4K)
    env.write_cd(GRAM_IPA)
    assert env.pgd != old_pgd
    assert _event(env, 0x2000).name == "F_TRANSLATION"  # the cached CD: old table
    env.issue(cfgi_cd(SID, 0))
    assert env.plat.hw.translate(SID, 0x2000) == _pa(env, 11)
    assert not _fresh(env, 0x1000, 0)  # the ASID's combined entries survive CFGI_CD
    env.issue(env.nh_asid())
    assert _fresh(env, 0x1000, 0)


@pytest.mark.parametrize("cmd", ["cfgi_ste", "cfgi_cd_all", "cfgi_ste_range"])
def test_config_invalidations_refetch_a_cd_moved_at_stage2(env: NestedEnv, cmd: str) -> None:
    """A CD read through stage 2 stays cached across TLBIs: only a CFGI refetches it."""
    _warm(env, 0x1000)
    moved = GRAM_IPA + 2 * SZ_4K  # a spare guest page gets a CD with another ASID
    env.gwrite(moved, CD0.encode(T0SZ=16, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1,
                                 ASET=1, ASID=ASID + 1))
    env.gwrite(moved + 8, env.gread(GRAM_IPA + 8))
    cd_leaf = env.s2_desc_pa(GRAM_IPA)
    env.plat.mem.write_u64(cd_leaf, (env.plat.mem.read_u64(cd_leaf) & ~((1 << 48) - 4096))
                           | env.gpa(moved))
    env.issue(env.s2_ipa(GRAM_IPA), env.s12_vmall())
    assert env.plat.hw.translate(SID, 0x1000) == _pa(env, 0)
    assert {t.tag >> 1 & 0xFFFF for t in env.plat.hw.iotlb.entries() if t.tag & 1} == {ASID}
    command = {"cfgi_ste": cfgi_ste(SID),
               "cfgi_cd_all": (CMD_CFGI0.encode(OP=Cmd.CFGI_CD_ALL, SID=SID), 0),
               "cfgi_ste_range": (CMD_CFGI0.encode(OP=Cmd.CFGI_ALL, SID=SID & ~7),
                                  CMD_CFGI_ALL1.encode(RANGE=2))}[cmd]
    env.issue(command)
    assert env.plat.hw.translate(SID, 0x1000) == _pa(env, 0)
    assert {t.tag >> 1 & 0xFFFF for t in env.plat.hw.iotlb.entries() if t.tag & 1} == {
        ASID, ASID + 1}


def test_cfgi_ste_range_outside_the_streamid_keeps_it(env: NestedEnv) -> None:
    _warm(env, 0x1000)
    env.gwrite(GRAM_IPA, 0)  # the CD made invalid
    env.issue((CMD_CFGI0.encode(OP=Cmd.CFGI_ALL, SID=SID + 8), CMD_CFGI_ALL1.encode(RANGE=2)))
    env.issue(env.nh_all())
    assert env.plat.hw.translate(SID, 0x1000) == _pa(env, 0)
    env.issue(cfgi_cd(SID, 0))
    assert _event(env, 0x1000).name == "C_BAD_CD"


# -- stage-2 HTTU --------------------------------------------------------------------------
def test_s2hd_marks_the_stage2_descriptor_dirty_on_a_nested_write(plat7: Platform) -> None:
    e = NestedEnv(plat7, s2_extra=STE2_S2HA | STE2_S2HD)
    e.s1_map(0x1000, PAGE3)
    e.s2_set(3, 3, writable=False, dbm=True, af=False)  # writable-clean, not accessed
    hw = plat7.hw
    assert hw.translate(SID, 0x1000) == _pa(e, 3)
    desc = plat7.mem.read_u64(e.s2_leaf_pa(3))
    assert desc & AF and not desc & S2AP_W and hw.stats.s2_af_updates == 1
    assert hw.translate(SID, 0x1008, W) == _pa(e, 3, 8)
    assert plat7.mem.read_u64(e.s2_leaf_pa(3)) & S2AP_W and hw.stats.s2_dirty_updates == 1
    hw.translate(SID, 0x1010, W)  # the combined entry now holds the dirty state
    assert hw.stats.s2_dirty_updates == 1
    e.close()


def test_without_s2hd_a_write_to_a_clean_dbm_page_faults(plat7: Platform) -> None:
    e = NestedEnv(plat7, s2_extra=STE2_S2HA)
    e.s1_map(0x1000, PAGE3)
    e.s2_set(3, 3, writable=False, dbm=True)
    ev = _event(e, 0x1000, W)
    assert (ev.name, ev.s2) == ("F_PERMISSION", True)
    e.close()


def test_stage1_httu_updates_are_writes_through_stage2(plat7: Platform) -> None:
    cd0 = CD0.encode(T0SZ=16, TG0=0, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1, ASET=1,
                     ASID=ASID, HA=1, HD=1)
    e = NestedEnv(plat7, cd_words0=cd0, s2_extra=STE2_S2HA | STE2_S2HD)
    e.s1_map(0x1000, PAGE3, writable=False, af=False, dbm=True)  # S1 writable-clean
    leaf_ipa = e.s1_leaf_ipa(0x1000)
    table_s2 = e.s2_desc_pa(leaf_ipa)
    mem = plat7.mem
    mem.write_u64(table_s2, (mem.read_u64(table_s2) & ~S2AP_W) | 1 << 51)  # S2 clean, DBM
    hw = plat7.hw
    assert hw.translate(SID, 0x1000, W) == _pa(e, 3)
    s1 = e.gread(leaf_ipa)
    assert s1 & AF and not s1 & (1 << 7)  # S1 accessed and dirty
    assert mem.read_u64(table_s2) & S2AP_W  # the table page became dirty at stage 2
    assert (hw.stats.af_updates, hw.stats.dirty_updates, hw.stats.s2_dirty_updates) == (1, 1, 1)
    # a table page the host made read-only: the S1 update is a stage-2 permission fault
    e.s1_map(0x2000, PAGE3, af=False)
    mem.write_u64(table_s2, mem.read_u64(table_s2) & ~(S2AP_W | 1 << 51))
    e.issue(e.s2_ipa(leaf_ipa), e.nh_all())
    ev = _event(e, 0x2000)
    assert (ev.name, ev.s2, ev.klass, ev.ttrnw, ev.ipa) == (
        "F_PERMISSION", True, EVT_CLASS_TT, False, leaf_ipa & ~0xFFF)
    assert not e.gread(e.s1_leaf_ipa(0x2000)) & AF
    e.close()


# -- the nested STE builder ----------------------------------------------------------------
def test_make_nested_domain_ste_merges_the_vste_onto_the_s2_ste(env: NestedEnv) -> None:
    s2cfg = env.s2.pgtbl.cfg.arm_lpae_s2_cfg if env.s2.pgtbl else None
    assert s2cfg is not None
    s2_ste = env.plat.smmu._paging_ste(env.s2, env.master)
    vste = (STE0.encode(V=1, CONFIG=SteConfig.S1_TRANS, S1FMT=1, S1CTXPTR=0x1234_5000,
                        S1CDMAX=3), STE1.encode(S1DSS=1, S1CIR=1, S1COR=2, S1CSH=3,
                                                S1STALLD=1))
    ste = make_nested_domain_ste(vste, s2cfg, env.vmid)
    assert STE0.decode(ste[0]) == {"V": 1, "CONFIG": 7, "S1FMT": 1, "S1CTXPTR": 0x1234_5000,
                                   "S1CDMAX": 3}
    assert ste[1] == s2_ste[1] | vste[1] | STE1["MEV"].mask
    assert ste[2:] == s2_ste[2:] and STE2["S2VMID"].get(ste[2]) == env.vmid
    bypass = make_nested_domain_ste((STE0.encode(V=1, CONFIG=4), 0), s2cfg, env.vmid)
    assert bypass == s2_ste
    for abort in [(0, 0), (STE0.encode(CONFIG=5), 0), (STE0.encode(V=1), 0)]:
        assert make_nested_domain_ste(abort, s2cfg, env.vmid) == (
            STE0.encode(V=1, CONFIG=0),) + (0,) * 7
    ats = make_nested_domain_ste(vste, s2cfg, env.vmid, ats_enabled=True)
    assert STE1["EATS"].get(ats[1]) == 1


def test_validate_vste() -> None:
    s1 = STE0.encode(V=1, CONFIG=5, S1CTXPTR=0x8000)
    assert validate_vste((s1, STE1.encode(EATS=1, S1DSS=2))) == (
        (s1, STE1.encode(S1DSS=2)), True)
    assert validate_vste((STE0.encode(V=1, CONFIG=4), STE1.encode(EATS=1))) == (
        (STE0.encode(V=1, CONFIG=4), 0), False)
    assert validate_vste((STE0.encode(CONFIG=5) | 1 << 62, 1 << 50)) == ((0, 0), False)
    bad = [(s1 | ~STE0_NESTING_ALLOWED & (1 << 64) - 1, 0),
           (s1, STE1["SHCFG"].mask), (s1, ~STE1_NESTING_ALLOWED & (1 << 64) - 1),
           (STE0.encode(V=1, CONFIG=6), 0),
           (STE0.encode(V=1, CONFIG=7), 0), (s1, STE1.encode(EATS=2))]
    for ste in bad:
        with pytest.raises(KernelError) as exc:
            validate_vste(ste)
        assert exc.value.errno == errno.EIO
