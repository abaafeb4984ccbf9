"""The CPU cache as non-snooping DMA sees it: stale reads, device writes under cached lines,
write-back on flush and eviction, unflushed unpins, and VT-d's SNP bit forcing a snoop."""

from __future__ import annotations

import numpy as np
import pytest

from iommulab import Machine, Prot
from iommulab.devices import DmaDevice
from iommulab.mem import PhysMem
from iommulab.mem.cpu_cache import CpuCache

PAGE = 4096


@pytest.fixture
def mem() -> PhysMem:
    m = PhysMem("16M", ram_base=0)
    m.cpu_cache = CpuCache(m, "64K")
    return m


def _dev(mem: PhysMem, snoop: bool) -> DmaDevice:
    dev = DmaDevice("dev", mem, None, 1)  # no IOMMU: iova = pa
    dev.snoop = snoop
    return dev


def test_non_snooping_read_sees_dram(mem: PhysMem) -> None:
    cache = mem.cpu_cache
    assert cache is not None
    mem.write(0x1000, b"old!")  # memory already there (not through the CPU cache)
    cache.cpu_write(0x1000, b"new!")
    assert mem.read(0x1000, 4) == b"new!"  # what the CPU sees
    assert _dev(mem, snoop=True).dma_read(0x1000, 4) == b"new!"
    assert cache.stats.stale_reads == 0
    assert _dev(mem, snoop=False).dma_read(0x1000, 4) == b"old!"
    assert (cache.stats.stale_reads, cache.stats.stale_lines) == (1, 1)
    cache.flush_pfns(np.array([1]))
    assert _dev(mem, snoop=False).dma_read(0x1000, 4) == b"new!"
    assert cache.stats.stale_reads == 1 and cache.stats.writebacks == 1


def test_device_write_under_cached_lines(mem: PhysMem) -> None:
    """The CPU keeps seeing its cached copy until it invalidates; a dirty line written back
    afterwards loses the device's bytes in that line, the other lines keep them."""
    cache = mem.cpu_cache
    assert cache is not None
    cache.cpu_write(0x2000, b"A" * 64)  # line 0 dirty
    cache.cpu_write(0x2040, b"B" * 64)  # line 1 dirty
    dev = _dev(mem, snoop=False)
    dev.dma_write(0x2000, b"D" * 192)  # lines 0-2 in DRAM
    assert mem.read(0x2000, 192) == b"A" * 64 + b"B" * 64 + bytes(64)  # stale for the CPU
    cache.cpu_write(0x2000, b"a")  # the CPU touches line 0 again
    cache.flush_pfns(np.array([2]))
    # line 0: written back over the device (only "a" + the CPU's old bytes); line 1 was
    # dirty too and is written back; line 2 was clean: the device's bytes show
    assert mem.read(0x2000, 192) == b"a" + b"A" * 63 + b"B" * 64 + b"D" * 64


def test_snooping_write_replaces_the_cached_lines(mem: PhysMem) -> None:
    cache = mem.cpu_cache
    assert cache is not None
    cache.cpu_write(0x3000, b"x" * 128)
    _dev(mem, snoop=True).dma_write(0x3000, b"y" * 64)
    assert mem.read(0x3000, 128) == b"y" * 64 + b"x" * 64
    assert _dev(mem, snoop=False).dma_read(0x3000, 64) == b"y" * 64  # not stale
    assert cache.stats.stale_reads == 0


def test_eviction_writes_back_oldest_first(mem: PhysMem) -> None:
    cache = mem.cpu_cache
    assert cache is not None  # 64K: 16 pages
    for i in range(17):
        cache.cpu_write(0x10000 + i * PAGE, bytes([i + 1]) * 8)
    assert cache.stats.evictions == 1 and len(cache.dram) == 16
    dev = _dev(mem, snoop=False)
    assert dev.dma_read(0x10000, 8) == b"\x01" * 8  # evicted: DRAM has it
    assert dev.dma_read(0x11000, 8) == bytes(8)  # still only in the cache
    big = bytes(range(256)) * (PAGE * 20 // 256)  # more than the cache holds at once
    cache.cpu_write(0x40000, big)
    assert len(cache.dram) == 16
    assert dev.dma_read(0x40000, 4 * PAGE) == big[:4 * PAGE]
    assert mem.read(0x40000, len(big)) == big
    cache._check()


def test_unflushed_unpin_counted_once(mem: PhysMem) -> None:
    cache = mem.cpu_cache
    assert cache is not None
    dev = _dev(mem, snoop=False)
    dev.dma_write(0x5000, b"z" * 2 * PAGE)
    cache.unpinned(np.array([5, 6, 7]))
    assert cache.stats.unflushed_unpins == 2
    cache.unpinned(np.array([5, 6]))
    assert cache.stats.unflushed_unpins == 2
    dev.dma_write(0x5000, b"z")
    cache.flush_pfns(np.array([5]))
    cache.unpinned(np.array([5]))
    assert cache.stats.unflushed_unpins == 2


def test_vtd_snoop_control_forces_snooping() -> None:
    """A No-Snoop device behind a unit with snoop control, in a domain that enforces
    coherency: every leaf has SNP, the access snoops, nothing is stale. Behind QEMU's unit
    (no snoop control) the same device reads DRAM."""
    m = Machine("x86-vtd", ram="256M")
    sc = m.add_pci_device("0000:00:02.0", iommu_unit=m.add_iommu_unit(snoop_control=True),
                          snoop=False)
    plain = m.add_pci_device("0000:00:03.0", snoop=False)
    cache = m.mem.cpu_cache
    assert cache is not None
    pa = m.mem.alloc_pages(0) << 12
    cache.cpu_write(pa, b"fresh")
    for dev, enforce in ((sc, True), (plain, False)):
        domain = m.driver.domain_alloc_paging(dev.dev_iommu.priv if dev.dev_iommu else None)
        assert dev.group is not None
        m.core.set_group_domain(dev.group, domain)
        assert m.driver.enforce_cache_coherency(domain) is enforce
        domain.map(0x100000, pa, PAGE, Prot.READ | Prot.WRITE | Prot.CACHE)
        got = dev.dma_read(0x100000, 5)
        assert got == (b"fresh" if enforce else bytes(5))
    assert cache.stats.stale_reads == 1
