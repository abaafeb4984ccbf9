"""IOTLB organisations: what stays cached, what is evicted, what an invalidation drops."""

from __future__ import annotations

import pytest

from iommulab.drivers.smmuv3.iotlb import IotlbConfig, IotlbEntry, make_iotlb, tlb_tag

TAG = tlb_tag(0, 1, True)
PAGE_ONLY = (12,)


def _entry(vpn: int, shift: int = 12, tag: int = TAG) -> IotlbEntry:
    return IotlbEntry(tag, vpn << shift, shift, 0x8000_0000 + (vpn << shift), True, True,
                      True, False, 0)


def test_qemu_flushes_everything_when_full() -> None:
    tlb = make_iotlb(IotlbConfig("qemu", 4))
    for vpn in range(4):
        tlb.insert(_entry(vpn))
    assert len(tlb) == 4
    tlb.insert(_entry(4))  # SMMU_IOTLB_MAX_SIZE reached: smmu_iotlb_inv_all first
    assert len(tlb) == 1 and tlb.stats.full_flushes == 1 and tlb.stats.evictions == 4
    assert tlb.lookup(TAG, 0, PAGE_ONLY) is None
    assert tlb.lookup(TAG, 4 << 12, PAGE_ONLY) is not None


def test_lru_evicts_the_least_recently_used() -> None:
    tlb = make_iotlb(IotlbConfig.tiny())
    tlb.insert(_entry(0))
    tlb.insert(_entry(1))
    assert tlb.lookup(TAG, 0, PAGE_ONLY) is not None  # 0 is now the most recent
    tlb.insert(_entry(2))
    assert tlb.lookup(TAG, 1 << 12, PAGE_ONLY) is None
    assert tlb.lookup(TAG, 0, PAGE_ONLY) is not None
    assert tlb.stats.evictions == 1 and len(tlb) == 2


@pytest.mark.parametrize("policy", ["lru", "rr"])
def test_set_associative_evicts_within_a_set(policy: str) -> None:
    tlb = make_iotlb(IotlbConfig("setassoc", 8, 2, policy))  # type: ignore[arg-type]
    # 4 sets indexed by the page number's low bits: pages 0, 4, 8 share a set, 1 does not.
    same_set, other = [0, 4, 8], 1
    tlb.insert(_entry(other))
    tlb.insert(_entry(0))
    tlb.insert(_entry(4))
    assert tlb.lookup(TAG, 0, PAGE_ONLY) is not None  # page 0 is now the recently used one
    tlb.insert(_entry(8))
    assert tlb.stats.evictions == 1 and len(tlb) == 3  # the other set kept its entry
    assert tlb.lookup(TAG, other << 12, PAGE_ONLY) is not None
    kept = [v for v in same_set if tlb.lookup(TAG, v << 12, PAGE_ONLY) is not None]
    assert kept == ([0, 8] if policy == "lru" else [4, 8])  # rr ignores use: way 0 goes


def test_lookup_probes_each_leaf_size() -> None:
    tlb = make_iotlb(IotlbConfig.qemu())
    tlb.insert(_entry(3, shift=21))  # a 2M block
    hit = tlb.lookup(TAG, (3 << 21) + 0x12345, (12, 21, 30))
    assert hit is not None and hit.shift == 21
    assert tlb.lookup(tlb_tag(0, 2, True), (3 << 21), (12, 21, 30)) is None  # other ASID


def test_range_invalidation_drops_overlapping_leaves_of_that_tag_only() -> None:
    tlb = make_iotlb(IotlbConfig.qemu())
    other = tlb_tag(0, 2, True)
    for vpn in range(16):
        tlb.insert(_entry(vpn))
        tlb.insert(_entry(vpn, tag=other))
    tlb.insert(_entry(1, shift=21))  # block [2M, 4M)
    tlb.invalidate_range("TLBI_NH_VA", TAG, 4 << 12, 6 << 12, (12, 21, 30))
    assert [e.va >> 12 for e in tlb.entries() if e.tag == TAG and e.shift == 12] == \
        [v for v in range(16) if v not in (4, 5)]
    tlb.invalidate_range("TLBI_NH_VA", TAG, (2 << 20) + 0x5000, (2 << 20) + 0x6000,
                         (12, 21, 30))
    assert not [e for e in tlb.entries() if e.shift == 21]  # the block covering it is gone
    assert len([e for e in tlb.entries() if e.tag == other]) == 16
    tlb.invalidate_where("TLBI_NH_ASID", other, tlb_tag(0xFFFF, 0xFFFF, True))
    assert {e.tag for e in tlb.entries()} == {TAG}
    assert tlb.stats.invalidations == {"TLBI_NH_VA": 2, "TLBI_NH_ASID": 1}


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        make_iotlb(IotlbConfig("lru", 0))
    with pytest.raises(ValueError, match="do not split into 3 ways"):
        make_iotlb(IotlbConfig("setassoc", 8, 3))
    with pytest.raises(ValueError, match="IOTLB kind"):
        make_iotlb(IotlbConfig("fifo", 8))  # type: ignore[arg-type]
