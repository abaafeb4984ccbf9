"""The DMA API over IOMMU DMA domains: drivers/iommu/dma-iommu.c (Linux 6.12 and 7.0).

Streaming mappings take an IOVA from the domain's :class:`~iommulab.iova.IovaDomain`
(32-bit addresses first for PCI devices), map it with ``iommu_map`` and hand
out the IOVA plus the offset into the first page. Unmapping is strict
(invalidate and sync, then free the IOVA) or lazy (no invalidation; the IOVA
waits in the flush queue until a full flush). MSI doorbells are mapped once
per domain. Not modelled: swiotlb bouncing of untrusted devices, PCI host
bridge windows, CPU cache maintenance for non-coherent devices (the cache
model comes with iommufd), P2P bus addresses, the dma_iova_* link API.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import BadAddress, InvalidArgument, KernelError, NotSupported, OutOfMemory
from ..iommu.domain import DomainType, IommuDomain, SgEntry
from ..iommu.gather import IommuIotlbGather
from ..iommu.resv import IommuCap, ResvType
from ..iova import IovaDomain
from ..kernel import LINUX_7_0
from ..prot import Prot
from .cookie import (
    IOVA_SINGLE_FQ_SIZE,
    IOVA_SINGLE_FQ_TIMEOUT,
    DmaCookie,
    MsiCookie,
    MsiPage,
)
from .types import (
    DMA_ATTR_ALLOC_SINGLE_PAGES,
    DMA_ATTR_MMIO,
    DMA_ATTR_PRIVILEGED,
    DMA_MAPPING_ERROR,
    CoherentBuffer,
    DmaDirection,
    Scatterlist,
)

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..iommu.core import IommuCore

__all__ = [
    "alloc_coherent",
    "dma_info_to_prot",
    "free_coherent",
    "get_msi_page",
    "init_domain",
    "map_phys",
    "map_phys_single",
    "map_sg",
    "prepare_msi",
    "unmap_phys",
    "unmap_phys_single",
    "unmap_sg",
]

_PAGE = 4096
_MAX_PAGE_ORDER = 10
_DMA_BIT_MASK_32 = (1 << 32) - 1


def dma_info_to_prot(dir: DmaDirection, coherent: bool, attrs: int) -> Prot:
    """``dma_info_to_prot``: IOMMU_READ/WRITE from the direction, CACHE/MMIO/PRIV from the rest."""
    key = (dir, coherent, attrs & _PROT_ATTRS)
    prot = _PROT_CACHE.get(key)
    if prot is None:
        prot = Prot.MMIO if attrs & DMA_ATTR_MMIO else (Prot.CACHE if coherent else Prot(0))
        if attrs & DMA_ATTR_PRIVILEGED:
            prot |= Prot.PRIV
        if dir == DmaDirection.BIDIRECTIONAL:
            prot |= Prot.READ | Prot.WRITE
        elif dir == DmaDirection.TO_DEVICE:
            prot |= Prot.READ
        elif dir == DmaDirection.FROM_DEVICE:
            prot |= Prot.WRITE
        else:
            prot = Prot(0)
        _PROT_CACHE[key] = prot
    return prot


_PROT_CACHE: dict[tuple[DmaDirection, bool, int], Prot] = {}
_PROT_ATTRS = DMA_ATTR_MMIO | DMA_ATTR_PRIVILEGED
_VALID_DIRS = frozenset((DmaDirection.BIDIRECTIONAL, DmaDirection.TO_DEVICE,
                         DmaDirection.FROM_DEVICE))


def _domain(dev: DmaDevice) -> tuple[IommuDomain, DmaCookie, IovaDomain]:
    """``iommu_get_dma_domain`` and its cookie, for a device using dma-iommu."""
    group = dev.group
    domain = group.default_domain if group is not None else None
    cookie = domain.cookie if domain is not None else None
    if domain is None or not isinstance(cookie, DmaCookie) or cookie.iovad is None:
        raise InvalidArgument(f"{dev.name}: not using IOMMU DMA ops (no DMA domain)")
    return domain, cookie, cookie.iovad


# -- domain setup ---------------------------------------------------------------------------
def init_domain(domain: IommuDomain, dev: DmaDevice, core: IommuCore) -> None:
    """``iommu_dma_init_domain``: the IOVA space, the flush queue and the reserved regions.

    IOVA 0 is never handed out (``base_pfn`` is at least 1). A second device
    must agree on granule and base (EFAULT otherwise). DMA_FQ falls back to
    DMA (strict) when the IOMMU cannot defer flushes or the queue cannot be
    allocated.
    """
    cookie = domain.cookie
    if not isinstance(cookie, DmaCookie):
        raise InvalidArgument(f"iommu_dma_init_domain: {domain!r} has no DMA cookie")
    order = (domain.pgsize_bitmap & -domain.pgsize_bitmap).bit_length() - 1
    base_pfn = max(1, domain.geometry.aperture_start >> order)
    if cookie.iovad is not None:
        if 1 << order != cookie.iovad.granule or base_pfn != cookie.iovad.start_pfn:
            raise BadAddress("iommu_dma_init_domain: Incompatible range for DMA domain")
        return
    cookie.iovad = IovaDomain(1 << order, base_pfn, ncpus=core.ncpus, clock=core.clock,
                              fail_nth=dev.mem.fail_nth)
    dev_iommu = dev.dev_iommu
    assert dev_iommu is not None
    if dev_iommu.shadow_on_flush:  # iommu_dma_init_options
        cookie.single_queue = True
        cookie.fq_size, cookie.fq_timeout = IOVA_SINGLE_FQ_SIZE, IOVA_SINGLE_FQ_TIMEOUT
    if domain.type == DomainType.DMA_FQ:
        # iommu_domain_supports_fq: generic_pt domains always can (7.0)
        fq_ok = domain.iommupt is not None or \
            dev_iommu.driver.capable(dev_iommu.priv, IommuCap.DEFERRED_FLUSH)
        if fq_ok and dev.mem.fail_nth.fails("alloc_percpu(iova_fq)"):
            core.log.append("iova flush queue initialization failed")
            fq_ok = False
        if fq_ok:
            cookie.init_fq(domain, core.ncpus)
        if not fq_ok:
            domain.type = DomainType.DMA
    _reserve_regions(domain, cookie, cookie.iovad, dev, core)


def _reserve_regions(domain: IommuDomain, cookie: DmaCookie, iovad: IovaDomain,
                     dev: DmaDevice, core: IommuCore) -> None:
    """``iova_reserve_iommu_regions``: every region but SW_MSI leaves the IOVA space;
    hardware MSI windows are pre-entered as identity MSI pages."""
    shift = iovad.shift
    for region in core.get_resv_regions(dev):
        if region.type == ResvType.SW_MSI:  # "We ARE the software that manages these!"
            continue
        iovad.reserve_iova(region.start >> shift, region.last >> shift)
        if region.type == ResvType.MSI:  # cookie_init_hw_msi_region
            start = region.start & ~(iovad.granule - 1)
            end = region.start + region.length
            for i in range(-(-(end - start) // iovad.granule)):
                page = start + i * iovad.granule
                cookie.msi_pages.insert(0, MsiPage(page, page))


# -- IOVA allocation ------------------------------------------------------------------------
def alloc_iova(domain: IommuDomain, size: int, dma_limit: int, dev: DmaDevice,
               cpu: int = 0) -> int:
    """``iommu_dma_alloc_iova``: 0 on failure.

    The MSI cookie bumps its base. Otherwise the limit is the smallest of
    the mask, the bus limit and (with ``force_aperture``) the aperture; PCI
    devices try below 4 GiB first and stop trying after the first failure.
    """
    cookie = domain.cookie
    if isinstance(cookie, MsiCookie):
        cookie.msi_iova += size
        return cookie.msi_iova - size
    assert isinstance(cookie, DmaCookie) and cookie.iovad is not None
    iovad = cookie.iovad
    shift = iovad.shift
    iova_len = size >> shift
    if dev.bus_dma_limit:
        dma_limit = min(dma_limit, dev.bus_dma_limit) if dma_limit else dev.bus_dma_limit
    geometry = domain.geometry
    if geometry.force_aperture and dma_limit > geometry.aperture_end:
        dma_limit = geometry.aperture_end
    dev_iommu = dev.dev_iommu
    if dma_limit > _DMA_BIT_MASK_32 and dev_iommu is not None and \
            dev_iommu.pci_32bit_workaround:
        pfn = iovad.alloc_iova_fast(iova_len, _DMA_BIT_MASK_32 >> shift, False, cpu)
        if pfn:
            return pfn << shift
        dev_iommu.pci_32bit_workaround = False
        dev.notices.append(f"Using {dma_limit.bit_length()}-bit DMA addresses")
    return iovad.alloc_iova_fast(iova_len, dma_limit >> shift, True, cpu) << shift


def free_iova(domain: IommuDomain, iova: int, size: int, gather: IommuIotlbGather | None,
              cpu: int = 0) -> None:
    """``iommu_dma_free_iova``: undo the MSI bump, queue (lazy) or free (strict)."""
    cookie = domain.cookie
    if isinstance(cookie, MsiCookie):
        cookie.msi_iova -= size
        return
    assert isinstance(cookie, DmaCookie) and cookie.iovad is not None
    shift = cookie.iovad.shift
    if gather is not None and gather.queued:
        cookie.queue_iova(iova >> shift, size >> shift, cpu)
    else:
        cookie.iovad.free_iova_fast(iova >> shift, size >> shift, cpu)


# -- streaming mappings ---------------------------------------------------------------------
def _unmap(dev: DmaDevice, dma_addr: int, size: int, cpu: int) -> None:
    """``__iommu_dma_unmap``: unmap without syncing; strict syncs now, lazy queues."""
    _unmap_in(_domain(dev), dma_addr, size, cpu)


def _unmap_in(state: tuple[IommuDomain, DmaCookie, IovaDomain], dma_addr: int, size: int,
              cpu: int) -> None:
    domain, cookie, iovad = state
    gmask = iovad.granule - 1
    iova_off = dma_addr & gmask
    dma_addr -= iova_off
    size = (size + iova_off + gmask) & ~gmask
    gather = IommuIotlbGather()
    gather.queued = queued = cookie.fq_domain is not None
    if domain.unmap_fast(dma_addr, size, gather) != size:
        domain.warnings["__iommu_dma_unmap: unmapped != size"] += 1
    if queued:  # iommu_dma_free_iova, lazy
        shift = iovad.shift
        cookie.queue_iova(dma_addr >> shift, size >> shift, cpu)
    else:
        domain.iotlb_sync(gather)
        free_iova(domain, dma_addr, size, None, cpu)


def _check_dir(dir: DmaDirection) -> None:
    if dir not in _VALID_DIRS:
        raise ValueError(f"invalid DMA direction {dir!r}")  # BUG_ON(!valid_dma_direction)


def map_phys(dev: DmaDevice, phys: int, size: int, dir: DmaDirection, attrs: int = 0,
             cpu: int = 0) -> int:
    """``iommu_dma_map_phys`` (``dma_map_page``): the DMA address, or DMA_MAPPING_ERROR.

    ``__iommu_dma_map`` inlined: this is the path every streaming DMA takes.
    """
    if dir not in _VALID_DIRS:
        _check_dir(dir)
    prot = dma_info_to_prot(dir, dev.coherent, attrs)
    domain, _, iovad = _domain(dev)
    gmask = iovad.granule - 1
    iova_off = phys & gmask
    size = (size + iova_off + gmask) & ~gmask
    iova = alloc_iova(domain, size, dev.dma_mask, dev, cpu)
    if not iova:
        return DMA_MAPPING_ERROR
    try:
        domain.map(iova, phys - iova_off, size, prot)
    except KernelError:
        free_iova(domain, iova, size, None, cpu)
        return DMA_MAPPING_ERROR
    return iova + iova_off


def unmap_phys(dev: DmaDevice, handle: int, size: int, dir: DmaDirection, attrs: int = 0,
               cpu: int = 0) -> None:
    """``iommu_dma_unmap_phys`` (``dma_unmap_page``); a WARN if nothing is mapped there."""
    if dir not in _VALID_DIRS:
        _check_dir(dir)
    state = _domain(dev)
    if not attrs & DMA_ATTR_MMIO and not state[0].iova_to_phys(handle):
        state[0].warnings["iommu_dma_unmap_phys: no mapping (double unmap?)"] += 1
        return
    _unmap_in(state, handle, size, cpu)


# -- lab: the single-granule streaming fast path ------------------------------------------
# prot by direction for attrs 0 (dma_info_to_prot), valid directions only
_PROT_COHERENT = {d: dma_info_to_prot(d, True, 0) for d in _VALID_DIRS}
_PROT_NONCOHERENT = {d: dma_info_to_prot(d, False, 0) for d in _VALID_DIRS}


class _Single:
    """Lab: the per-IOVA-domain constants the single-granule paths read (model-only),
    kept on the cookie and rebuilt when its IOVA domain changes."""

    __slots__ = ("cpu0", "fail", "granule", "iovad", "online", "shift")

    def __init__(self, iovad: IovaDomain) -> None:
        self.iovad = iovad
        self.fail = iovad.fail_nth
        self.granule = iovad.granule
        self.shift = iovad.shift
        self.online = iovad.rcaches.online
        self.cpu0 = iovad.rcaches.classes[0].cpu  # the one-granule size class, per CPU


def _single(cookie: DmaCookie) -> _Single | None:
    iovad = cookie.iovad
    if iovad is None:
        return None
    s = cookie.single
    if not isinstance(s, _Single) or s.iovad is not iovad:
        s = cookie.single = _Single(iovad)
    return s


def map_phys_single(dev: DmaDevice, phys: int, size: int, dir: DmaDirection,
                    cpu: int = 0) -> int:
    """Lab (model-only): :func:`map_phys` with attrs 0, flattened for a buffer inside
    one IOVA granule whose IOVA comes from the top of ``cpu``'s loaded magazine and
    whose page table exists (``iommu_dma_map_phys`` -> ``iommu_dma_alloc_iova`` ->
    ``alloc_iova_fast`` -> ``iova_rcache_get`` and ``iommu_map`` of one page, in one
    function). Same IOVA, entry and counters; anything else, or fail-nth armed or
    logging, is :func:`map_phys` itself. O(1).
    """
    group = dev.group
    domain = group.default_domain if group is not None else None
    if domain is not None:
        cookie = domain.cookie
        one = domain._one
        prot = (_PROT_COHERENT if dev.coherent else _PROT_NONCOHERENT).get(dir)
        if type(cookie) is DmaCookie and one is not None and prot is not None:
            s = cookie.single
            if type(s) is not _Single or s.iovad is not cookie.iovad:
                s = _single(cookie)
            granule = one.pgsize
            off = phys & (granule - 1)
            if s is not None and 0 < size <= granule - off and s.granule == granule:
                fail = s.fail
                if fail is None or not (fail._remaining or fail.log is not None):
                    # iommu_dma_alloc_iova
                    dma_limit = dev.dma_mask
                    if dev.bus_dma_limit:
                        dma_limit = min(dma_limit, dev.bus_dma_limit) if dma_limit \
                            else dev.bus_dma_limit
                    geometry = domain.geometry
                    if geometry.force_aperture and dma_limit > geometry.aperture_end:
                        dma_limit = geometry.aperture_end
                    dev_iommu = dev.dev_iommu
                    if dma_limit > _DMA_BIT_MASK_32 and dev_iommu is not None and \
                            dev_iommu.pci_32bit_workaround:
                        dma_limit = _DMA_BIT_MASK_32
                    # iova_rcache_get: iova_magazine_pop when the top entry fits
                    if cpu in s.online:
                        mag = s.cpu0[cpu].loaded
                        if mag and mag[-1] <= dma_limit >> s.shift:
                            iova = mag.pop() << s.shift
                            s.iovad.stats.rcache_hits += 1
                            paddr = phys - off
                            if domain.ops is not one.ops or \
                                    domain.pgsize_bitmap != one.bitmap or \
                                    (iova | paddr) & one.mask or \
                                    not one.sp.map_one(iova, paddr, prot):
                                try:
                                    domain.map(iova, paddr, granule, prot)
                                except KernelError:
                                    free_iova(domain, iova, granule, None, cpu)
                                    return DMA_MAPPING_ERROR
                            return iova + off
    return map_phys(dev, phys, size, dir, 0, cpu)


def unmap_phys_single(dev: DmaDevice, handle: int, size: int, dir: DmaDirection,
                      cpu: int = 0) -> None:
    """Lab (model-only): :func:`unmap_phys` with attrs 0, flattened for a lazy domain and
    a mapping inside one IOVA granule (``iommu_dma_unmap_phys``'s ``iova_to_phys``
    check, ``__iommu_dma_unmap``'s unmap of one page with a queued gather, and
    ``queue_iova`` when the ring has room and nothing to reclaim). Same entry, ring
    and counters; anything else, or fail-nth armed or logging, is :func:`unmap_phys`.
    O(1).
    """
    group = dev.group
    domain = group.default_domain if group is not None else None
    if domain is not None and dir in _VALID_DIRS:
        cookie = domain.cookie
        one = domain._one
        if type(cookie) is DmaCookie and one is not None and cookie.fq_domain is not None:
            s = cookie.single
            if type(s) is not _Single or s.iovad is not cookie.iovad:
                s = _single(cookie)
            granule = one.pgsize
            off = handle & (granule - 1)
            iova = handle - off
            if s is not None and 0 < size <= granule - off and s.granule == granule and \
                    domain.ops is one.ops and domain.pgsize_bitmap == one.bitmap and \
                    not iova & one.mask:
                fail = s.fail
                if (fail is None or not (fail._remaining or fail.log is not None)) and \
                        one.sp.unmap_one_mapped(iova, off):
                    pfn = iova >> s.shift
                    ring = cookie.rings[0 if cookie.single_queue else cpu]
                    head, tail, mask = ring.head, ring.tail, ring.mod_mask
                    if cookie.fq_timer_on and (tail + 1) & mask != head and (
                            head == tail
                            or ring.entries[head][2] >= cookie.fq_flush_finish_cnt):
                        ring.tail = (tail + 1) & mask  # queue_iova's usual case
                        ring.entries[tail] = (pfn, 1, cookie.fq_flush_start_cnt)
                        cookie.fq_stats.queued += 1
                    else:
                        cookie.queue_iova(pfn, 1, cpu)
                    return
    unmap_phys(dev, handle, size, dir, 0, cpu)


def map_sg(dev: DmaDevice, sg: list[Scatterlist], dir: DmaDirection, attrs: int = 0,
           cpu: int = 0) -> int:
    """``iommu_dma_map_sg``: one IOVA range for the whole list; the number of DMA segments,
    or a negative errno with the list's DMA fields invalidated: -ENOMEM when no IOVA
    is left, otherwise ``iommu_map_sg``'s own -ENOMEM or -EREMOTEIO, and -EINVAL for any
    other failure or a short map (``if (ret != -ENOMEM && ret != -EREMOTEIO) return
    -EINVAL``).

    Each entry is widened to whole IOVA granules; an entry that would cross
    the device's segment boundary gets the previous one padded up to it;
    ``__finalise_sg`` then joins entries that are contiguous in IOVA space
    up to the maximum segment size.
    """
    _check_dir(dir)
    domain, _, iovad = _domain(dev)
    prot = dma_info_to_prot(dir, dev.coherent, attrs)
    gmask = iovad.granule - 1
    mask = dev.seg_boundary_mask
    widened: list[int] = []  # the IOVA length of each entry, padding included
    iova_len = 0
    for s in sg:
        s_iova_off = s.offset & gmask
        s_length = (s.length + s_iova_off + gmask) & ~gmask
        pad_len = (mask - iova_len + 1) & mask
        if pad_len and pad_len < s_length - 1:
            widened[-1] += pad_len
            iova_len += pad_len
        widened.append(s_length)
        iova_len += s_length
    if not iova_len:
        return _finalise_sg(dev, sg, widened, 0, gmask)
    iova = alloc_iova(domain, iova_len, dev.dma_mask, dev, cpu)
    if not iova:
        _invalidate_sg(sg)
        return -errno.ENOMEM
    entries = [SgEntry(s.phys - (s.offset & gmask), n) for s, n in zip(sg, widened, strict=True)]
    ret = _map_all_or_free(domain, iova, iova_len, entries, prot, cpu)
    if ret < iova_len:
        _invalidate_sg(sg)
        return ret if ret in (-errno.ENOMEM, -errno.EREMOTEIO) else -errno.EINVAL
    return _finalise_sg(dev, sg, widened, iova, gmask)


def _map_all_or_free(domain: IommuDomain, iova: int, size: int, entries: list[SgEntry],
                     prot: int, cpu: int) -> int:
    """``iommu_map_sg`` of ``size`` bytes at ``iova``: the bytes mapped or -errno. On an
    error or a short map the IOVA is freed (nothing stays mapped, so nothing to flush)."""
    try:
        ret = domain.map_sg(iova, entries, prot)
    except KernelError as err:
        ret = -err.errno_value
    if ret < size:
        free_iova(domain, iova, size, None, cpu)
    return ret


def _finalise_sg(dev: DmaDevice, sg: list[Scatterlist], widened: list[int], dma_addr: int,
                 gmask: int) -> int:
    """``__finalise_sg``: DMA segments, joining entries that start on a granule boundary."""
    seg_mask = dev.seg_boundary_mask
    max_len = dev.max_seg_size
    cur = -1
    cur_len = count = 0
    for s, s_iova_len in zip(sg, widened, strict=True):
        s_length = s.length  # the caller's entries are never widened in place here
        s_iova_off = s.offset & gmask
        s.dma_address, s.dma_length = DMA_MAPPING_ERROR, 0
        if cur_len and not s_iova_off and dma_addr & seg_mask and max_len - cur_len >= s_length:
            cur_len += s_length
        else:
            cur += 1
            cur_len = s_length
            count += 1
            sg[cur].dma_address = dma_addr + s_iova_off
        sg[cur].dma_length = cur_len
        dma_addr += s_iova_len
        if s_length + s_iova_off < s_iova_len:
            cur_len = 0
    return count


def _invalidate_sg(sg: list[Scatterlist]) -> None:
    """``__invalidate_sg``: the DMA fields of a list whose mapping failed."""
    for s in sg:
        s.dma_address, s.dma_length = DMA_MAPPING_ERROR, 0


def unmap_sg(dev: DmaDevice, sg: list[Scatterlist], dir: DmaDirection, attrs: int = 0,
             cpu: int = 0) -> None:
    """``iommu_dma_unmap_sg``: the list is one IOVA range from its first to its last segment."""
    _check_dir(dir)
    start = end = 0
    first = True
    for s in sg:
        if not s.dma_length:
            break
        if first:
            start, first = s.dma_address, False
        end = s.dma_address + s.dma_length
    if end:
        _unmap(dev, start, end - start, cpu)


# -- coherent allocations -------------------------------------------------------------------
def alloc_coherent(dev: DmaDevice, size: int, attrs: int = 0,
                   cpu: int = 0) -> CoherentBuffer | None:
    """``iommu_dma_alloc`` (blocking, not FORCE_CONTIGUOUS: ``iommu_dma_alloc_remap``).

    Pages come from the largest orders the IOMMU can map that still fit,
    falling back order by order; they are mapped back to back at one IOVA
    range below ``coherent_dma_mask``. Zeroed. None on failure.
    """
    domain, _, iovad = _domain(dev)
    prot = dma_info_to_prot(DmaDirection.BIDIRECTIONAL, dev.coherent, attrs)
    alloc_sizes = domain.pgsize_bitmap
    min_size = alloc_sizes & -alloc_sizes
    if min_size < _PAGE:
        min_size = _PAGE
        alloc_sizes |= _PAGE
    else:
        size = -(-size // min_size) * min_size
    if attrs & DMA_ATTR_ALLOC_SINGLE_PAGES:
        alloc_sizes = min_size
    count = -(-size // _PAGE)
    blocks = _alloc_pages(dev, count, alloc_sizes >> 12)
    if blocks is None:
        return None
    pages = [(pfn + i) << 12 for pfn, order in blocks for i in range(1 << order)][:count]
    gmask = iovad.granule - 1
    size = (size + gmask) & ~gmask
    iova = alloc_iova(domain, size, dev.coherent_dma_mask, dev, cpu)
    if not iova:
        _free_blocks(dev, blocks)
        return None
    runs: list[SgEntry] = []
    for pa in pages:  # sg_alloc_table_from_pages joins contiguous pages
        if runs and runs[-1].phys + runs[-1].length == pa:
            runs[-1] = SgEntry(runs[-1].phys, runs[-1].length + _PAGE)
        else:
            runs.append(SgEntry(pa, _PAGE))
    extra = count * _PAGE - size
    if extra > 0:  # the map covers 'size' bytes of IOVA
        runs[-1] = SgEntry(runs[-1].phys, runs[-1].length - extra)
    if _map_all_or_free(domain, iova, size, runs, prot, cpu) < size:
        _free_blocks(dev, blocks)
        return None
    return CoherentBuffer(size, iova, pages, blocks)


def _alloc_pages(dev: DmaDevice, count: int, order_mask: int) -> list[tuple[int, int]] | None:
    """``__iommu_dma_alloc_pages``: the biggest allowed orders first, then smaller ones."""
    order_mask &= (1 << (_MAX_PAGE_ORDER + 1)) - 1
    if not order_mask:
        return None
    blocks: list[tuple[int, int]] = []
    while count > 0:
        order_mask &= (1 << count.bit_length()) - 1  # GENMASK(__fls(count), 0)
        got = None
        while order_mask:
            order = order_mask.bit_length() - 1
            try:
                got = (dev.mem.alloc_pages(order, site="__iommu_dma_alloc_pages"), order)
                break
            except OutOfMemory:
                order_mask &= ~(1 << order)
        if got is None:
            _free_blocks(dev, blocks)
            return None
        blocks.append(got)
        count -= 1 << got[1]
    return blocks


def _free_blocks(dev: DmaDevice, blocks: list[tuple[int, int]]) -> None:
    for pfn, order in blocks:
        dev.mem.free_pages(pfn, order)


def free_coherent(dev: DmaDevice, buf: CoherentBuffer, cpu: int = 0) -> None:
    """``iommu_dma_free``: unmap first, then free the pages."""
    _unmap(dev, buf.dma_handle, buf.size, cpu)
    _free_blocks(dev, buf.blocks)
    buf.blocks = []


# -- MSI ------------------------------------------------------------------------------------
def get_msi_page(dev: DmaDevice, msi_addr: int, domain: IommuDomain) -> MsiPage | None:
    """``iommu_dma_get_msi_page``: the doorbell page mapped WRITE|NOEXEC|MMIO, once per domain.

    The page is one IOVA granule (DMA cookie) or one CPU page (MSI cookie).
    None when no IOVA is left or the map fails.
    """
    cookie = domain.cookie
    if isinstance(cookie, DmaCookie):
        assert cookie.iovad is not None
        size = cookie.iovad.granule
    elif isinstance(cookie, MsiCookie):
        size = _PAGE
    else:
        raise InvalidArgument(f"iommu_dma_get_msi_page: {domain!r} has no MSI cookie")
    msi_addr &= ~(size - 1)
    for page in cookie.msi_pages:
        if page.phys == msi_addr:
            return page
    if dev.mem.fail_nth.fails("kzalloc(iommu_dma_msi_page)"):
        return None
    iova = alloc_iova(domain, size, dev.dma_mask, dev)
    if not iova:
        return None
    try:
        domain.map(iova, msi_addr, size, Prot.WRITE | Prot.NOEXEC | Prot.MMIO)
    except KernelError:
        free_iova(domain, iova, size, None)
        return None
    page = MsiPage(iova, msi_addr)
    cookie.msi_pages.insert(0, page)  # list_add
    return page


def prepare_msi(dev: DmaDevice, msi_addr: int) -> int:
    """``iommu_dma_prepare_msi`` + compose: the address the device must write its MSI to.

    No domain, an identity domain, and (6.12: ``if (!domain || !domain->iova_cookie)``)
    any domain without a cookie pass the doorbell's physical address through
    untranslated; in 7.0 an iommufd HWPT's domain goes to ``iommufd_sw_msi``
    (:meth:`~iommulab.iommufd.objects.IommufdCtx.sw_msi`) and any other domain whose
    cookie is neither DMA nor MSI is EOPNOTSUPP (``default: ret = -EOPNOTSUPP``). ENOMEM
    when the doorbell page cannot be mapped.
    """
    group = dev.group
    domain = group.domain if group is not None else None
    if domain is None or domain.type == DomainType.IDENTITY:
        return msi_addr
    if domain.iommufd_sw_msi is not None:  # 7.0: cookie_type IOMMU_COOKIE_IOMMUFD
        return domain.iommufd_sw_msi(dev, msi_addr)
    cookie = domain.cookie
    if not isinstance(cookie, (DmaCookie, MsiCookie)):
        assert group is not None
        if group.core.kernel < LINUX_7_0:
            return msi_addr
        raise NotSupported(f"iommu_dma_prepare_msi: {domain!r} has no MSI-capable cookie")
    page = get_msi_page(dev, msi_addr, domain)
    if page is None:
        raise OutOfMemory(f"iommu_dma_sw_msi: cannot map the doorbell page of {msi_addr:#x}")
    granule = cookie.iovad.granule if isinstance(cookie, DmaCookie) and cookie.iovad else _PAGE
    return page.iova | (msi_addr & (granule - 1))
