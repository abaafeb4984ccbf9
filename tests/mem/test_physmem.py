"""Physical memory: regions, contents, table pages, pins, fragmentation, fail-nth."""

import errno

import numpy as np
import pytest

from iommulab.errors import BadAddress, OutOfMemory
from iommulab.mem import SECTION_FRAMES, PhysMem, get_order
from iommulab.sizes import SZ_2M, SZ_4K, SZ_16K, SZ_64K


@pytest.mark.parametrize(("size", "order"), [
    (1, 0), (64, 0), (SZ_4K, 0), (SZ_4K + 1, 1), (8192, 1), (SZ_16K, 2), (SZ_64K, 4),
    (SZ_2M, 9), (256 * 1024, 6)])
def test_get_order(size: int, order: int) -> None:
    assert get_order(size) == order


def test_regions_and_lookup() -> None:
    mem = PhysMem("1G", ram_base=0x4000_0000)
    bar = mem.add_mmio(0x1000_0000, "1M", "bar0")
    assert mem.region_at(0x1000_0000) is bar
    assert mem.is_ram(0x4000_0000) and not mem.is_ram(0x1000_0000)
    assert mem.region_at(0x3FFF_FFFF) is None
    assert mem.ram_bytes == 1 << 30
    with pytest.raises(ValueError, match="overlaps"):
        mem.add_mmio(0x1008_0000, "1M", "bar1")


def test_contents_are_sparse_and_cross_pages() -> None:
    mem = PhysMem("1G")
    base = 0x4000_0000
    assert mem.read(base + 10, 4) == bytes(4)
    assert len(mem.contents) == 0
    data = bytes(range(256)) * 40  # 10240 bytes over three pages
    mem.write(base + 4000, data)
    assert mem.read(base + 4000, len(data)) == data
    assert len(mem.contents) == 4
    with pytest.raises(BadAddress) as exc:
        mem.read(base + (1 << 30) - 4, 8)
    assert exc.value.errno == errno.EFAULT and "0x7ffffffc" in str(exc.value)


def test_iommu_pages_share_memory_with_contents() -> None:
    mem = PhysMem("1G")
    pa, table = mem.alloc_iommu_pages(SZ_16K)
    assert pa % SZ_16K == 0 and table.dtype == np.dtype("<u8") and len(table) == 2048
    assert mem.iommu_pages == 4
    table[513] = 0x1122334455667788  # second 4K page of the block
    assert mem.read_u64(pa + 513 * 8) == 0x1122334455667788
    mem.write(pa + 8, (0xAB).to_bytes(8, "little"))
    assert int(table[1]) == 0xAB
    mem.free_iommu_pages(pa)
    assert mem.iommu_pages == 0 and mem.read_u64(pa + 513 * 8) == 0
    mem._check()


def test_coherent_driver_memory_is_not_table_memory() -> None:
    mem = PhysMem("1G")
    pa, words = mem.alloc_dma_coherent(3 * SZ_4K)  # rounded to 4 pages, aligned
    assert pa % SZ_16K == 0 and len(words) == 2048 and mem.iommu_pages == 0
    mem.write_u64(pa + 4096, 0xFFFF_0000_1234_5678)  # a device writing a queue entry
    assert int(words[512]) == 0xFFFF_0000_1234_5678
    assert mem.read(pa + 4096, 2) == b"\x78\x56"
    mem.free_zeroed(pa)
    assert mem.frames.allocated_blocks == 0
    with pytest.raises(ValueError, match="not an allocated block"):
        mem.free_zeroed(pa)


def test_sub_page_table_takes_a_whole_page() -> None:
    mem = PhysMem("1G")
    pa, table = mem.alloc_iommu_pages(64)
    assert len(table) == 512 and mem.iommu_pages == 1
    mem.free_iommu_pages(pa)


def test_pins_by_section() -> None:
    mem = PhysMem("1G")
    pfn = 0x40000 + SECTION_FRAMES - 3  # straddles a section boundary
    mem.pins.pin(pfn, 6)
    mem.pins.pin(pfn + 1, 1)
    assert mem.pins.count(pfn + 1) == 2 and mem.pins.count(pfn + 5) == 1
    assert list(mem.pins.counts(pfn - 1, 8)) == [0, 1, 2, 1, 1, 1, 1, 0]
    assert mem.pins.pinned_frames == 6 and mem.pins.pins == 7
    with pytest.raises(ValueError, match="not pinned"):
        mem.pins.unpin(pfn, 7)
    assert mem.pins.pins == 7  # refused unpin changed nothing
    mem.pins.unpin(pfn, 6)
    mem.pins.unpin(pfn + 1, 1)
    assert mem.pins.pinned_frames == 0 and mem.pins.pins == 0
    mem._check()


def test_fragmentation_removes_huge_blocks_and_is_reversible() -> None:
    mem = PhysMem("64M")
    assert mem.frames.largest_free_order() >= 9
    held = mem.fragment(order=9, fraction=1.0, seed=1)
    assert held == 32
    assert mem.frames.largest_free_order() == 8
    with pytest.raises(OutOfMemory):
        mem.alloc_pages(9)
    mem.frames._check()
    mem.release_fragmentation()
    assert mem.frames.largest_free_order() >= 9
    mem._check()


def test_partial_fragmentation_leaves_some_huge_blocks() -> None:
    mem = PhysMem("64M")
    assert mem.fragment(order=9, fraction=0.5, seed=3) == 16
    pfn = mem.alloc_pages(9)
    assert pfn % 512 == 0


def test_fail_nth_fails_exactly_the_armed_call() -> None:
    mem = PhysMem("64M")
    mem.fail_nth.arm(3)
    mem.alloc_pages(0)
    mem.alloc_pages(0)
    with pytest.raises(OutOfMemory, match="fail-nth") as exc:
        mem.alloc_pages(0)
    assert exc.value.errno == errno.ENOMEM and mem.fail_nth.triggered
    mem.alloc_pages(0)  # disarmed after firing
    assert mem.frames.allocated_blocks == 3


def test_out_of_memory_names_the_order() -> None:
    mem = PhysMem("1M")
    with pytest.raises(OutOfMemory, match="order 9"):
        mem.alloc_pages(9)


def test_bulk_table_allocation_is_many_single_blocks() -> None:
    mem = PhysMem("1G")
    pas, rows = mem.alloc_iommu_pages_bulk(SZ_4K, 3)
    assert rows.shape == (3, 512) and mem.iommu_pages == 3 and len(set(pas)) == 3
    rows[1, 7] = 0x55
    assert mem.read_u64(pas[1] + 7 * 8) == 0x55  # each row is its block's memory
    mem.free_iommu_pages(pas[0])  # blocks are freed one by one or in bulk
    mem.free_iommu_pages_bulk(pas[1:])
    assert mem.iommu_pages == 0 and mem.frames.allocated_blocks == 0
    mem.fail_nth.arm(3)
    with pytest.raises(OutOfMemory):
        mem.alloc_iommu_pages_bulk(SZ_4K, 5)
    assert mem.iommu_pages == 0 and mem.frames.allocated_blocks == 0  # the two taken returned
    with pytest.raises(ValueError, match="not an allocated block"):
        mem.free_iommu_pages_bulk([pas[0]])


def test_range_checks_still_refuse_after_a_cached_region() -> None:
    mem = PhysMem("1G")
    base = 0x4000_0000
    mem.write(base, b"x")  # caches the RAM region
    with pytest.raises(BadAddress):
        mem.read(base + (1 << 30) - 2, 4)
    with pytest.raises(BadAddress):
        mem.read(base - 8, 4)


def test_unpin_of_runs_naming_a_page_twice_frees_it_once() -> None:
    # unpin_user_pages of a list holding one page twice (two user addresses of one
    # shared page) puts two references; the page its owner let go is freed once
    mem = PhysMem("16M")
    pfn = mem.alloc_pages(0)
    mem.pin_runs([(pfn, 1), (pfn, 1)])
    mem.free_unpinned([(pfn, 1)])  # the last mapping goes; the pins keep the page
    free_before = mem.frames.free_frames
    mem.unpin_runs([(pfn, 1), (pfn, 1)])
    assert mem.pins.pins == 0
    assert mem.frames.free_frames == free_before + 1
    mem.frames._check()
