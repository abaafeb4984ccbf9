"""Dirty tracking through the SMMUv3: device DMA, HTTU, read_and_clear_dirty, split/merge."""

from __future__ import annotations

import errno

import pytest

from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import HWPT_ALLOC_DIRTY_TRACKING, ArmSmmuDomain
from iommulab.errors import DmaFault, KernelError
from iommulab.iommu import IovaBitmap
from iommulab.pgtable import IOMMU_DIRTY_NO_CLEAR
from iommulab.sizes import SZ_2M, SZ_4K

from .platform import RW, Platform, make_platform, page_word

BASE = 0x40_0000_0000


def _dirty_pages(d: ArmSmmuDomain, size: int, flags: int = 0) -> list[int]:
    bitmap = d.read_and_clear_dirty(BASE, size, flags)
    return [i for i in range(size // SZ_4K) if bitmap.is_set(BASE + i * SZ_4K)]


def _setup(p: Platform, size: int, block: bool) -> tuple[ArmSmmuDomain, DmaDevice, int]:
    master, dev = p.device()
    d = p.domain(master, HWPT_ALLOC_DIRTY_TRACKING)
    buf = p.buffer(size)
    if block:
        d.map(BASE, buf, size, RW)
    else:
        for off in range(0, size, SZ_4K):  # page by page: 4K leaves
            d.map(BASE + off, buf + off, SZ_4K, RW)
    d.read_and_clear_dirty(BASE, size)  # new writable mappings start dirty
    return d, dev, buf


def test_dma_bytes_land_and_are_reported_dirty_exactly_once(plat: Platform) -> None:
    d, dev, buf = _setup(plat, 64 * SZ_4K, block=False)
    dev.dma_write(BASE + 3 * SZ_4K + 100, b"abc")
    dev.dma_write(BASE + 17 * SZ_4K, b"x" * 10)
    dev.dma_write(BASE + 17 * SZ_4K + 50, b"y")
    dev.dma_write(BASE + 41 * SZ_4K - 2, b"span")  # crosses into page 41
    assert plat.mem.read(buf + 3 * SZ_4K + 100, 3) == b"abc"
    assert plat.mem.read(buf + 41 * SZ_4K - 2, 4) == b"span"
    assert dev.dma_read(BASE + 17 * SZ_4K + 7, 3) == b"xxx"
    assert _dirty_pages(d, 64 * SZ_4K) == [3, 17, 40, 41]
    assert _dirty_pages(d, 64 * SZ_4K) == []  # cleared
    dev.dma_read(BASE, 64 * SZ_4K)  # reads never dirty
    assert _dirty_pages(d, 64 * SZ_4K) == []


def test_no_clear_keeps_the_bits(plat: Platform) -> None:
    d, dev, _ = _setup(plat, 16 * SZ_4K, block=False)
    dev.dma_write(BASE + 5 * SZ_4K, b"z")
    assert _dirty_pages(d, 16 * SZ_4K, IOMMU_DIRTY_NO_CLEAR) == [5]
    assert _dirty_pages(d, 16 * SZ_4K, IOMMU_DIRTY_NO_CLEAR) == [5]
    assert _dirty_pages(d, 16 * SZ_4K) == [5]
    assert _dirty_pages(d, 16 * SZ_4K) == []


def test_a_dirty_block_is_reported_whole(plat: Platform) -> None:
    d, dev, _ = _setup(plat, SZ_2M, block=True)
    assert d.pgtbl is not None and d.pgtbl.leaf_histogram() == {SZ_2M: 1}
    dev.dma_write(BASE + 12345, b"!")
    assert _dirty_pages(d, SZ_2M) == list(range(512))  # one byte: 2 MiB to resend


def test_dirty_ops_exist_only_where_the_kernel_has_them(plat: Platform) -> None:
    master, _ = plat.device()
    plain = plat.domain(master)
    with pytest.raises(KernelError) as exc:
        plain.set_dirty_tracking(True)
    assert exc.value.errno == errno.EOPNOTSUPP
    with pytest.raises(KernelError) as exc:
        plain.read_and_clear_dirty(0, SZ_4K)
    assert exc.value.errno == errno.EOPNOTSUPP
    s2 = make_platform(stages="s2")
    m2, _ = s2.device()
    with pytest.raises(KernelError) as exc:
        s2.smmu.domain_alloc_paging_flags(m2, HWPT_ALLOC_DIRTY_TRACKING)
    assert exc.value.errno == errno.EOPNOTSUPP
    s2.close()


# -- the IOTLB and the kernel's sync after clearing -----------------------------------------------
@pytest.mark.parametrize(("caches_dirty", "sync_dirty_clear", "seen"), [
    (True, False, False),  # Linux 7.0 on an SMMU whose TLB keeps the dirty state: missed
    (True, True, True),  # the lab's fix: invalidate what read_and_clear_dirty cleaned
    (False, False, True),  # an SMMU that re-checks the descriptor on every write
])
def test_a_write_after_clearing_is_seen_only_if_the_tlb_is_invalidated(
        caches_dirty: bool, sync_dirty_clear: bool, seen: bool) -> None:
    p = make_platform(iotlb_caches_dirty=caches_dirty)
    p.smmu.sync_dirty_clear = sync_dirty_clear
    d, dev, buf = _setup(p, 16 * SZ_4K, block=False)
    dev.dma_write(BASE + 2 * SZ_4K, b"round 1")
    assert _dirty_pages(d, 16 * SZ_4K) == [2]
    # iommufd syncs the gather after clearing; its pgsize is 0, so arm_smmu_iotlb_sync
    # returns early and the IOTLB keeps a writable-dirty entry for page 2.
    dev.dma_write(BASE + 2 * SZ_4K, b"round 2")
    assert p.mem.read(buf + 2 * SZ_4K, 7) == b"round 2"  # the data did change
    assert _dirty_pages(d, 16 * SZ_4K) == ([2] if seen else [])
    p.close()


# -- split and merge -------------------------------------------------------------------------------
def test_tracking_at_4k_splits_blocks_and_stopping_merges_them(plat: Platform) -> None:
    d, dev, _ = _setup(plat, 4 * SZ_2M, block=True)
    assert d.pgtbl is not None
    before = d.pgtbl.iter_entries()
    assert d.set_dirty_tracking(True, granule=SZ_4K) == 4
    assert d.pgtbl.leaf_histogram() == {SZ_4K: 4 * 512}
    dev.dma_write(BASE + SZ_2M + 12345, b"!")
    assert _dirty_pages(d, 4 * SZ_2M) == [512 + 3]  # one page, not one block
    assert d.set_dirty_tracking(False) == 4
    assert d.pgtbl.iter_entries() == before  # bit for bit
    assert d.set_dirty_tracking(False) == 0  # nothing split any more


def test_merge_ors_the_dirty_state_of_the_run(plat: Platform) -> None:
    d, dev, _ = _setup(plat, 2 * SZ_2M, block=True)
    d.set_dirty_tracking(True, granule=SZ_4K)
    dev.dma_write(BASE + SZ_2M + 7 * SZ_4K, b"!")
    d.set_dirty_tracking(False)
    assert _dirty_pages(d, 2 * SZ_2M) == list(range(512, 1024))


def test_bbm_level_above_the_hardware_is_refused() -> None:
    p = make_platform(bbml=0)
    d, _, _ = _setup(p, SZ_2M, block=True)
    with pytest.raises(KernelError, match="BBM level 1") as exc:
        d.set_dirty_tracking(True, granule=SZ_4K, bbm_level=1)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert d.pgtbl is not None and d.pgtbl.leaf_histogram() == {SZ_2M: 1}
    assert d.set_dirty_tracking(True, granule=SZ_4K) == 1  # BBM 0 is the default there
    p.close()


@pytest.mark.parametrize("bbm", [0, 1, 2])
def test_concurrent_dma_never_reaches_a_wrong_address(bbm: int) -> None:
    """DMA between the steps of split and merge: right bytes or a fault (BBM 0 only)."""
    p = make_platform()
    size = 8 * SZ_2M
    d, dev, buf = _setup(p, size, block=True)
    probes = [BASE + i * (SZ_2M // 4) + (i % 7) * SZ_4K for i in range(size // (SZ_2M // 4))]
    faults = {"split": 0, "merge": 0}
    phase = "split"

    def dma_stream(step: str) -> None:
        for n, iova in enumerate(probes):
            want = buf + (iova - BASE)
            try:
                if n % 2:
                    dev.dma_write(iova + 8, b"written during " + step.encode())
                    assert p.mem.read(want + 8, 7) == b"written"
                else:
                    assert dev.dma_read(iova, 8) == page_word(want)
            except DmaFault as fault:
                assert fault.reason == "F_TRANSLATION"
                faults[phase] += 1

    for iova in probes:  # warm the IOTLB: some DMA hits old entries during the window
        dev.dma_read(iova, 8)
    d.set_dirty_tracking(True, granule=SZ_4K, bbm_level=bbm, on_step=dma_stream)
    phase = "merge"
    d.set_dirty_tracking(False, bbm_level=bbm, on_step=dma_stream)
    dma_stream("after")
    if bbm == 0:
        assert faults["split"] > 0 and faults["merge"] > 0
        assert p.smmu.handle_events()  # each transient fault was an event
    else:
        assert faults == {"split": 0, "merge": 0}
        assert p.smmu.handle_events() == []
    assert d.pgtbl is not None and d.pgtbl.leaf_histogram() == {SZ_2M: 8}
    p.close()


def test_merged_runs_are_not_served_from_stale_page_entries(plat: Platform) -> None:
    d, dev, _ = _setup(plat, 2 * SZ_2M, block=True)
    d.set_dirty_tracking(True, granule=SZ_4K)
    for page in range(0, 1024, 37):
        dev.dma_read(BASE + page * SZ_4K, 8)  # page entries in the IOTLB
    d.set_dirty_tracking(False)
    assert not [e for e in plat.hw.iotlb.entries() if e.shift == 12]
    d.unmap(BASE, 2 * SZ_2M)  # then move the range elsewhere
    other = plat.buffer(2 * SZ_2M)
    d.map(BASE, other, 2 * SZ_2M, RW)
    for page in range(0, 1024, 37):
        assert dev.dma_read(BASE + page * SZ_4K, 8) == page_word(other + page * SZ_4K)


def test_dirty_bitmap_of_a_caller(plat: Platform) -> None:
    d, dev, _ = _setup(plat, 8 * SZ_4K, block=False)
    dev.dma_write(BASE + SZ_4K, b"1")
    bitmap = IovaBitmap(BASE, 8 * SZ_4K, SZ_4K)
    assert d.read_and_clear_dirty(BASE, 8 * SZ_4K, 0, bitmap) is bitmap
    assert bitmap.to_bytes() == (0b10).to_bytes(8, "little")
    assert d.tlb_stats.iotlb_sync == 2  # the core synced after each clearing read
