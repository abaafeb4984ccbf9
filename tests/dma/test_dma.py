"""The DMA API over the SMMUv3 model, checked against dma-iommu.c's behaviour."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommulab import Prot
from iommulab.devices import DMA_BIT_MASK
from iommulab.dma import (
    DMA_MAPPING_ERROR,
    DmaCookie,
    DmaDirection,
    Scatterlist,
    dma_alloc_coherent,
    dma_free_coherent,
    dma_map_page,
    dma_map_sg,
    dma_set_mask_and_coherent,
    dma_unmap_page,
    dma_unmap_sg,
    iommu_dma,
)
from iommulab.errors import DmaFault
from iommulab.iommu import DomainType, IommuDomain, ResvRegion, ResvType

from .platform import DmaPlatform, make_dma_platform

TO_DEV = DmaDirection.TO_DEVICE
BIDIR = DmaDirection.BIDIRECTIONAL


@pytest.fixture(params=[True, False], ids=["strict", "lazy"])
def plat(request: pytest.FixtureRequest) -> Iterator[DmaPlatform]:
    p = make_dma_platform(strict=request.param)
    yield p
    p.close()


@pytest.fixture
def strict_plat() -> Iterator[DmaPlatform]:
    p = make_dma_platform(strict=True)
    yield p
    p.close()


@pytest.fixture
def lazy_plat() -> Iterator[DmaPlatform]:
    p = make_dma_platform(strict=False)
    yield p
    p.close()


def _cookie(dev_domain: IommuDomain | None) -> DmaCookie:
    assert dev_domain is not None and isinstance(dev_domain.cookie, DmaCookie)
    return dev_domain.cookie


def test_default_domain_follows_the_policy(plat: DmaPlatform) -> None:
    dev = plat.device()
    group = dev.group
    assert group is not None and group.domain is group.default_domain
    expect = DomainType.DMA if plat.core.strict else DomainType.DMA_FQ
    assert group.default_domain is not None and group.default_domain.type == expect
    cookie = _cookie(group.default_domain)
    assert (cookie.fq_domain is None) == plat.core.strict
    assert cookie.iovad is not None and cookie.iovad.start_pfn == 1  # IOVA 0 never used
    assert group.sysfs_reserved_regions() == "0x0000000008000000 0x00000000080fffff msi\n"


def test_map_page_offsets_and_top_down_iovas(plat: DmaPlatform) -> None:
    dev = plat.device()
    pa = plat.page(b"abcd")
    a = dma_map_page(dev, pa + 0x123, 0x20, TO_DEV)
    assert a == 0xFFFFF123  # top of the 32-bit space, plus the offset in the page
    assert dev.dma_read(a, 4) == b"dabc"
    with pytest.raises(DmaFault):
        dev.dma_write(a, b"x")  # TO_DEVICE maps read-only
    b = dma_map_page(dev, pa, 0x1001, BIDIR)  # two pages
    assert b == 0xFFFFC000  # two pages: a size-aligned pair below the first
    dma_unmap_page(dev, b, 0x1001, BIDIR)
    dma_unmap_page(dev, a, 0x20, TO_DEV)


def test_strict_invalidates_every_unmap(strict_plat: DmaPlatform) -> None:
    plat = strict_plat
    dev = plat.device()
    pa = plat.page(b"s")
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None
    base = domain.tlb_stats.iotlb_sync
    for _ in range(5):
        a = dma_map_page(dev, pa, 64, TO_DEV)
        assert dev.dma_read(a, 1) == b"s"
        dma_unmap_page(dev, a, 64, TO_DEV)
        with pytest.raises(DmaFault):  # no stale window
            dev.dma_read(a, 1)
    assert domain.tlb_stats.iotlb_sync - base == 5
    assert plat.hw.stats.commands["TLBI_NH_VA"] >= 5


def test_lazy_defers_to_one_flush(lazy_plat: DmaPlatform) -> None:
    plat = lazy_plat
    dev = plat.device()
    pa = plat.page(b"L")
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None
    cookie = _cookie(domain)
    flush0 = domain.tlb_stats.flush_all
    addrs = []
    for _ in range(5):
        a = dma_map_page(dev, pa, 64, TO_DEV)
        assert dev.dma_read(a, 1) == b"L"
        dma_unmap_page(dev, a, 64, TO_DEV)
        addrs.append(a)
    assert domain.tlb_stats.iotlb_sync == 0 and cookie.queued() == 5
    assert len(set(addrs)) == 5  # nothing reused before the flush
    assert dev.dma_read(addrs[-1], 1) == b"L"  # stale IOTLB entry still translates
    plat.clock.advance(11_000_000)  # 10 ms is 3 jiffies (12 ms) at HZ=250
    assert cookie.queued() == 5
    plat.clock.advance(1_000_000)
    assert cookie.queued() == 0 and domain.tlb_stats.flush_all - flush0 == 1
    assert cookie.fq_stats.timer_flushes == 1
    with pytest.raises(DmaFault):
        dev.dma_read(addrs[-1], 1)
    assert dma_map_page(dev, pa, 64, TO_DEV) == addrs[-1]  # back from the rcache
    dma_unmap_page(dev, addrs[-1], 64, TO_DEV)


def test_full_ring_flushes_before_queueing(lazy_plat: DmaPlatform) -> None:
    plat = lazy_plat
    dev = plat.device()
    pa = plat.page()
    cookie = _cookie(dev.group.default_domain)  # type: ignore[union-attr]
    seen: set[int] = set()
    for i in range(300):
        a = dma_map_page(dev, pa, 64, TO_DEV)
        if i < 255:
            assert a not in seen
        seen.add(a)
        dma_unmap_page(dev, a, 64, TO_DEV)
    # 255 entries fill the ring (one slot stays empty); the 256th unmap flushes first
    assert cookie.fq_stats.full_flushes == 1 and cookie.queued() == 300 - 255
    assert cookie.fq_stats.freed == 255


def test_iova_reuse_only_after_the_covering_flush(lazy_plat: DmaPlatform) -> None:
    plat = lazy_plat
    dev = plat.device()
    pa = plat.page()
    domain = dev.group.default_domain  # type: ignore[union-attr]
    cookie = _cookie(domain)
    live: dict[int, int] = {}  # IOVA page -> flush count when it was unmapped
    for step in range(2000):
        a = dma_map_page(dev, pa, 64, TO_DEV) & ~0xFFF
        if a in live:
            assert cookie.fq_flush_finish_cnt > live.pop(a), "IOVA reused before its flush"
        dma_unmap_page(dev, a, 64, TO_DEV)
        live[a] = cookie.fq_flush_start_cnt
        plat.clock.advance(step % 7 * 1_000_000)


def test_pci_32bit_workaround_gives_up_after_first_failure(plat: DmaPlatform) -> None:
    low = ResvRegion(0, 1 << 32, Prot.READ, ResvType.RESERVED)  # nothing below 4 GiB
    dev = plat.device(resv=[low])
    dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64))
    pa = plat.page()
    assert dev.dev_iommu is not None and dev.dev_iommu.pci_32bit_workaround
    a = dma_map_page(dev, pa, 64, TO_DEV)
    assert a == (1 << 48) - 0x1000  # limited by the aperture (48-bit IAS)
    assert not dev.dev_iommu.pci_32bit_workaround
    assert dev.notices == ["Using 48-bit DMA addresses"]
    dma_unmap_page(dev, a, 64, TO_DEV)
    # a 32-bit device gets nothing at all
    dev32 = plat.device(0x20, "dev32", resv=[low])
    assert dma_map_page(dev32, pa, 64, TO_DEV) == DMA_MAPPING_ERROR


def test_map_sg_coalesces_into_segments(plat: DmaPlatform) -> None:
    dev = plat.device()
    p1, p2, p3 = plat.page(b"1"), plat.page(b"2"), plat.page(b"3")
    p4 = plat.page(b"4")
    sg = [Scatterlist.at(p1 + 0x100, 0xF00), Scatterlist.at(p2, 0x1000),
          Scatterlist.at(p3, 0x800), Scatterlist.at(p4, 0x10)]
    n = dma_map_sg(dev, sg, TO_DEV)
    # p1's tail, p2 and p3's head are one IOVA run; p3 ends mid-page so p4 starts anew
    assert n == 2
    assert [s.dma_length for s in sg] == [0xF00 + 0x1000 + 0x800, 0x10, 0, 0]
    assert sg[0].dma_address & 0xFFF == 0x100
    assert sg[1].dma_address == sg[0].dma_address - 0x100 + 0x3000
    data = dev.dma_read(sg[0].dma_address, sg[0].dma_length)
    assert data == b"1" * 0xF00 + b"2" * 0x1000 + b"3" * 0x800
    assert dev.dma_read(sg[1].dma_address, 0x10) == b"4" * 0x10
    dma_unmap_sg(dev, sg, TO_DEV)
    if plat.core.strict:
        with pytest.raises(DmaFault):
            dev.dma_read(sg[0].dma_address, 1)


def test_map_sg_respects_max_segment_size(plat: DmaPlatform) -> None:
    dev = plat.device()
    dev.max_seg_size = 0x2000
    pages = [plat.page(bytes([i + 1])) for i in range(3)]
    sg = [Scatterlist.at(p, 0x1000) for p in pages]
    assert dma_map_sg(dev, sg, TO_DEV) == 2
    assert [s.dma_length for s in sg] == [0x2000, 0x1000, 0]
    dma_unmap_sg(dev, sg, TO_DEV)


def test_coherent_alloc_is_zeroed_and_shared(plat: DmaPlatform) -> None:
    dev = plat.device()
    buf = dma_alloc_coherent(dev, 3 * 4096 + 5)
    assert buf is not None and buf.size == 4 * 4096 and buf.dma_handle == 0xFFFFC000
    assert plat.mem.read(buf.phys(0), 16) == bytes(16)
    dev.dma_write(buf.dma_handle + 0x2FFE, b"xyz")  # across a page boundary
    assert plat.mem.read(buf.phys(0x2FFE), 2) + plat.mem.read(buf.phys(0x3000), 1) == b"xyz"
    dma_free_coherent(dev, buf)


def test_direct_regions_are_mapped_and_reserved(plat: DmaPlatform) -> None:
    rmrr = ResvRegion(0x8000_0000, 0x3000, Prot.READ | Prot.WRITE, ResvType.DIRECT)
    dev = plat.device(resv=[rmrr])
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None
    for off in (0, 0x1000, 0x2000):
        assert domain.iova_to_phys(0x8000_0000 + off) == 0x8000_0000 + off
    cookie = _cookie(domain)
    assert cookie.iovad is not None and cookie.iovad.find_iova(0x80001) is not None
    assert dev.dev_iommu is not None and dev.dev_iommu.require_direct
    group = dev.group
    assert group is not None
    with pytest.raises(OSError, match="Firmware has requested this device have a 1:1") as e:
        plat.core.set_group_domain(group, plat.smmu.blocked_domain)
    assert e.value.errno == errno.EINVAL and group.domain is domain


def test_relaxable_regions_do_not_require_direct(plat: DmaPlatform) -> None:
    usb = ResvRegion(0x8000_0000, 0x1000, Prot.READ, ResvType.DIRECT_RELAXABLE)
    dev = plat.device(resv=[usb])
    assert dev.dev_iommu is not None and not dev.dev_iommu.require_direct
    group = dev.group
    assert group is not None and group.default_domain is not None
    assert group.default_domain.iova_to_phys(0x8000_0000) == 0x8000_0000
    plat.core.set_group_domain(group, plat.smmu.blocked_domain)
    plat.core.set_group_domain(group, group.default_domain)


def test_second_device_in_a_group_shares_the_domain(plat: DmaPlatform) -> None:
    a = plat.device(0x10, "a")
    assert a.group is not None
    b = plat.device(0x11, "b", probe=False)
    plat.core.probe_device(b, a.group)
    assert b.group is a.group and len(a.group.devices) == 2
    pa = plat.page(b"g")
    addr = dma_map_page(a, pa, 8, TO_DEV)
    assert b.dma_read(addr, 1) == b"g"  # one domain: b sees a's mapping
    dma_unmap_page(a, addr, 8, TO_DEV)


def test_double_unmap_warns_and_changes_nothing(plat: DmaPlatform) -> None:
    dev = plat.device()
    pa = plat.page()
    a = dma_map_page(dev, pa, 8, TO_DEV)
    dma_unmap_page(dev, a, 8, TO_DEV)
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None
    dma_unmap_page(dev, a, 8, TO_DEV)
    assert domain.warnings["iommu_dma_unmap_phys: no mapping (double unmap?)"] == 1


def test_bad_direction_is_refused(plat: DmaPlatform) -> None:
    dev = plat.device()
    with pytest.raises(ValueError, match="invalid DMA direction"):
        dma_map_page(dev, plat.page(), 8, DmaDirection.NONE)


def test_map_sg_returns_the_page_tables_enomem(strict_plat: DmaPlatform) -> None:
    """iommu_dma_map_sg: ``ret = iommu_map_sg(...)`` fails with -ENOMEM when the page
    table cannot grow, and ``if (ret != -ENOMEM && ret != -EREMOTEIO) return -EINVAL;
    return ret;`` hands that -ENOMEM back, with the list's DMA fields invalidated."""
    dev = strict_plat.device()
    sg = [Scatterlist.at(strict_plat.page(b"a"), 0x1000)]
    strict_plat.mem.fail_nth.arm(2)  # kmem_cache iova, then iommu_alloc_pages in the walk
    try:
        assert iommu_dma.map_sg(dev, sg, TO_DEV) == -errno.ENOMEM
    finally:
        strict_plat.mem.fail_nth.disarm()
    assert (sg[0].dma_address, sg[0].dma_length) == (DMA_MAPPING_ERROR, 0)
    assert dma_map_sg(dev, sg, TO_DEV) == 1  # and nothing was left behind
    dma_unmap_sg(dev, sg, TO_DEV)


def test_map_sg_folds_other_map_errors_into_einval(strict_plat: DmaPlatform) -> None:
    """A physical address beyond the table's oas: io-pgtable's -ERANGE becomes -EINVAL."""
    dev = strict_plat.device()
    sg = [Scatterlist.at(1 << 50, 0x1000)]
    assert iommu_dma.map_sg(dev, sg, TO_DEV) == -errno.EINVAL
    assert (sg[0].dma_address, sg[0].dma_length) == (DMA_MAPPING_ERROR, 0)
