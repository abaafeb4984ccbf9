"""The pSeries DDW story (lab workload): a device goes from the default 32-bit window to a
direct 64-bit window, and the same device is refused when its default table is in use.

Each case builds a ppc64-pseries machine, a device whose PE gets the given hypervisor
offer, maps one buffer under the 32-bit mask (released again unless ``keep_mapping``),
asks for 64 bits with ``dma_set_mask`` and reports what ``enable_ddw`` chose, the bus
address the buffer gets afterwards, the RTAS and hcall counts and whether a device
write through that address reaches the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..devices import DMA_BIT_MASK
from ..drivers.pseries import DMA_MAPPING_ERROR, DdwOffer
from ..machine import Machine
from ..report import format_size

__all__ = ["DEMO_CASES", "DdwCase", "DdwResult", "run_ddw"]


@dataclass(frozen=True)
class DdwCase:
    name: str
    ram: str
    offer: DdwOffer
    keep_mapping: bool = False  # the driver keeps its 32-bit mapping when it asks for 64


@dataclass
class DdwResult:
    case: DdwCase
    mode: str  # "direct", "dynamic", "refused"
    window: str  # the DDW property, or what stayed
    dma_before: int
    dma_after: int
    rtas: dict[str, int]
    hcalls: dict[str, int]
    dma_ok: bool
    log: list[str]


DEMO_CASES = (
    DdwCase("QEMU: second window", "8G", DdwOffer()),
    DdwCase("one window, default table idle", "8G", DdwOffer(max_windows=1,
                                                              page_shifts=(12, 16, 24))),
    DdwCase("one window, default table in use", "8G", DdwOffer(max_windows=1),
            keep_mapping=True),
    DdwCase("small largest block", "8G", DdwOffer(largest_block=1 << 7)),
)


def run_ddw(case: DdwCase, buf: int = 0x1234_5000) -> DdwResult:
    m = Machine("ppc64-pseries", ram=case.ram)
    dev = m.add_pci_device("0000:00:01.0", ddw=case.offer)
    pdev = m.pseries.devs[dev.sid]
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(32))
    before = m.dma.map_phys(dev, buf, 4096)
    if not case.keep_mapping:
        m.dma.unmap_phys(dev, before, 4096)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(64))
    after = m.dma.map_phys(dev, buf, 4096)
    ok = after != DMA_MAPPING_ERROR
    if ok:
        dev.dma_write(after, b"via DDW")
        ok = m.mem.read(buf, 7) == b"via DDW"
    ddw = pdev.pdn.ddw
    if ddw is None:
        mode, window = "refused", "default 32-bit window kept"
    else:
        mode = "direct" if pdev.dma_ops_bypass else "dynamic"
        window = (f"2^{ddw.window_shift} at {ddw.dma_base:#x}, "
                  f"{format_size(1 << ddw.tce_shift)} pages")
    phb = pdev.pdn.phb
    return DdwResult(case, mode, window, before, after, dict(phb.stats.rtas),
                     dict(phb.stats.hcalls), ok, list(pdev.pdn.log))
