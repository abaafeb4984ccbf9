"""Lab: a NIC-like device streaming receive buffers through the DMA API, strict vs lazy.

Buffers of ``buffer_size`` bytes are packed into 4K pages, mapped with
``dma_map_page`` (FROM_DEVICE), written by the device through the SMMUv3 and
unmapped, one every ``interval_ns`` of simulated time. Two measures:

* **stale window**: after each ``dma_unmap_page`` returns, the device keeps
  reading the old IOVA at every later packet until the read faults; the time
  until then, and how many unmapped pages were reachable at once, come from
  real translations (stale IOTLB entries), not from bookkeeping.
* **sub-page exposure**: right after each map, the device reads the rest of
  the IOMMU pages around its buffer; every byte it can reach that is not the
  buffer is exposed (neighbouring buffers, other data in the page).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock
from ..devices import DmaDevice
from ..dma import DmaCookie, DmaDirection, dma_map_page, dma_unmap_page
from ..drivers.smmuv3 import ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from ..errors import DmaFault
from ..iommu import IommuCore
from ..mem import PhysMem

__all__ = ["StreamingResult", "run_streaming"]

_PAGE = 4096


@dataclass(frozen=True)
class StreamingResult:
    mode: str  # "strict" or "lazy"
    packets: int
    buffer_size: int
    iotlb_syncs: int  # range invalidations + sync, one per strict unmap
    flush_all: int  # whole-domain invalidations (lazy: ring full or timer)
    tlbi_commands: int  # TLBI commands the SMMU executed
    cmd_syncs: int
    stale_pages_max: int  # unmapped pages reachable at the same time
    stale_reads: int  # successful device reads of unmapped IOVAs
    stale_ns_max: int  # longest time an unmapped IOVA stayed reachable
    stale_ns_mean: float
    exposed_bytes: int  # bytes beyond the buffers the device could read
    iova_rcache_hits: int
    iova_tree_allocs: int
    iotlb_lookups: int
    iotlb_hits: int
    #: the DMA domain's saved state with the last buffer mapped, when asked for
    state: dict[str, object] | None = None


def _probe(dev: DmaDevice, stale: dict[int, int], windows: list[int], now: int) -> int:
    """The device reads every unmapped IOVA once; a fault ends that IOVA's window."""
    reached = 0
    for iova, t in list(stale.items()):
        try:
            dev.dma_read(iova, 1)
            reached += 1
        except DmaFault:
            windows.append(now - t)
            del stale[iova]
    return reached


def run_streaming(mode: str = "lazy", *, packets: int = 2000, buffer_size: int = 1536,
                  interval_ns: int = 5_000, hz: int = 250, save_state: bool = False
                  ) -> StreamingResult:
    """Stream ``packets`` receive buffers in ``mode`` ("strict" or "lazy")."""
    if mode not in ("strict", "lazy"):
        raise ValueError(f"mode must be 'strict' or 'lazy', not {mode!r}")
    if not 0 < buffer_size <= _PAGE:
        raise ValueError(f"buffer_size must be in (0, 4096], not {buffer_size}")
    mem = PhysMem("1G")
    hw = SmmuV3Hw(mem, SmmuV3Config())
    smmu = ArmSmmuDevice(hw)
    core = IommuCore(smmu, clock=Clock(hz=hz), strict=mode == "strict")
    nic = DmaDevice("nic", mem, hw, 0x10)
    core.probe_device(nic)
    group = nic.group
    assert group is not None and group.default_domain is not None
    domain = group.default_domain
    cookie = domain.cookie
    assert isinstance(cookie, DmaCookie) and cookie.iovad is not None
    per_page = _PAGE // buffer_size
    npages = 64
    base = mem.alloc_pages(6) << 12  # 64 pages of receive buffers
    slots = [base + (i // per_page) * _PAGE + (i % per_page) * buffer_size
             for i in range(npages * per_page)]
    stale: dict[int, int] = {}  # unmapped IOVA -> when unmap returned
    windows: list[int] = []
    stale_reads = stale_max = exposed = 0
    payload = bytes(range(256)) * (buffer_size // 256 + 1)
    clock = core.clock
    i = 0
    state = None
    while i < packets or stale:  # after the last packet, until every window has ended
        clock.advance(interval_ns)
        reached = _probe(nic, stale, windows, clock.now_ns)
        stale_reads += reached
        stale_max = max(stale_max, reached)
        smmu.handle_events()
        if i == packets:
            continue
        pa = slots[i % len(slots)]
        addr = dma_map_page(nic, pa, buffer_size, DmaDirection.FROM_DEVICE)
        nic.dma_write(addr, payload[:buffer_size])
        off = addr & (_PAGE - 1)
        end = -(-(off + buffer_size) // _PAGE) * _PAGE
        nic.dma_read(addr - off, off)  # everything before the buffer in its pages
        nic.dma_read(addr + buffer_size, end - off - buffer_size)  # and after it
        exposed += end - buffer_size
        if save_state and i == packets - 1:
            from ..inspect import save_domain
            state = save_domain(domain, name=f"{mode} DMA domain, last buffer mapped",
                                resv=group.resv_regions())
        dma_unmap_page(nic, addr, buffer_size, DmaDirection.FROM_DEVICE)
        stale[addr] = clock.now_ns
        i += 1
    windows = [w - interval_ns for w in windows]  # the first probe found it already gone
    cmds = hw.stats.commands
    result = StreamingResult(
        mode, packets, buffer_size, domain.tlb_stats.iotlb_sync, domain.tlb_stats.flush_all,
        sum(n for name, n in cmds.items() if name.startswith("TLBI")), cmds["CMD_SYNC"],
        stale_max, stale_reads, max(windows, default=0),
        sum(windows) / len(windows) if windows else 0.0, exposed,
        cookie.iovad.stats.rcache_hits, cookie.iovad.stats.tree_allocs,
        hw.iotlb.stats.lookups, hw.iotlb.stats.hits, state)
    core.release_device(nic)
    smmu.remove()
    mem.free_pages(base >> 12, 6)
    return result
