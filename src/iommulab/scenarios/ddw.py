"""ddw: pSeries dynamic DMA window choices for several RAM sizes and hypervisor offers.

On ppc64-pseries each device's PE gets a hypervisor offer (windows, largest block,
page sizes). A driver maps a buffer under a 32-bit mask, asks for 64 bits, and
``enable_ddw`` decides: a direct window covering all RAM (the device bypasses the
TCE allocator), a dynamic window of TCEs mapped on demand, or a refusal that
keeps the default 32-bit window (:mod:`iommulab.workload.ddw`).

Offers (``offers``): ``qemu`` (QEMU 10's spapr-pci-host-bridge: two windows, 4K, 64K,
2M and 16M pages, the 6-output query with a largest block of 2^37 TCEs),
``qemu-before-7.1`` (4K and 64K pages, the 5-output query with 2^31 TCEs), ``one-window``
(the default window must be removed first; its table is idle), ``one-window-in-use``
(the driver keeps its 32-bit mapping, so the table is in use and the kernel refuses),
``small-block`` (a largest block of 2^7 TCEs: 2 GiB of 16M pages).

Parameters: ``rams`` (guest RAM sizes), ``offers``.
"""

from __future__ import annotations

from typing import Any

from ..drivers.pseries import DdwOffer
from ..machine import PLATFORMS
from ..report import format_size
from ..workload.ddw import DdwCase, run_ddw
from .base import Param, Plot, RunContext, Scenario, ScenarioResult, Table, check_host_memory

#: QEMU's SPAPR_MEMORY_BLOCK_SIZE: spapr refuses RAM that is not a multiple of it
SPAPR_MEMORY_BLOCK_SIZE = 256 << 20

#: offer name -> (offer, the driver keeps its 32-bit mapping)
OFFERS: dict[str, tuple[DdwOffer, bool]] = {
    "qemu": (DdwOffer(), False),
    "qemu-before-7.1": (DdwOffer.qemu_before_7_1(), False),
    "one-window": (DdwOffer(max_windows=1), False),
    "one-window-in-use": (DdwOffer(max_windows=1), True),
    "small-block": (DdwOffer(largest_block=1 << 7), False),
}

PARAMS = (
    Param("rams", "size", (8 << 30, 64 << 30, 1 << 40), "guest RAM sizes", quick=(8 << 30,),
          many=True, minimum=1 << 30, maximum=PLATFORMS["ppc64-pseries"][1],
          multiple=SPAPR_MEMORY_BLOCK_SIZE,
          why="QEMU spapr takes RAM in 256M memory blocks; RAM from 0 must end below the "
              "PHB's 32-bit MMIO window at 0x200080000000; at least 1G (the driver's "
              "32-bit mapping)"),
    Param("offers", "str", tuple(OFFERS), "hypervisor offers", many=True,
          choices=tuple(OFFERS)),
)


#: host bytes the model spends per TCE of a direct window (measured: 16), and its fixed cost
_HOST_BYTES_PER_TCE = 20
_HOST_BYTES_BASE = 100 << 20


def check(params: dict[str, Any], platform: str) -> None:
    """A direct window holds one TCE per page of its largest page size over all RAM: the
    host must hold the model's TCE table for the largest RAM and smallest such page."""
    shift = min(max(OFFERS[name][0].page_shifts) for name in params["offers"])
    ram = max(params["rams"])
    check_host_memory(_HOST_BYTES_BASE + (ram >> shift) * _HOST_BYTES_PER_TCE,
                      f"rams={format_size(ram)}")


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, "ppc64-pseries: a driver maps under a 32-bit mask, then asks "
                               "for 64 bits (enable_ddw on each hypervisor offer)")
    cases = [(ram, name) for ram in p["rams"] for name in p["offers"]]
    rows: list[list[object]] = []
    indirect: list[float] = []
    for n, (ram, name) in enumerate(cases):
        ctx.progress(n, len(cases), f"{format_size(ram)} {name}")
        offer, keep = OFFERS[name]
        r = run_ddw(DdwCase(name, str(ram), offer, keep_mapping=keep))
        calls = r.hcalls.get("H_PUT_TCE_INDIRECT", 0)
        rows.append([format_size(ram), name, r.mode, r.window, f"{r.dma_before:#x}",
                     f"{r.dma_after:#x}", " ".join(f"{k} {v}" for k, v in sorted(r.rtas.items())),
                     calls, "yes" if r.dma_ok else "NO"])
        indirect.append(float(calls))
        key = f"{format_size(ram)}.{name}"
        res.headline[f"{key}.mode"] = r.mode
        res.headline[f"{key}.dma_ok"] = int(r.dma_ok)
        res.headline[f"{key}.put_tce_indirect"] = calls
        refused = [line for line in r.log if "in use" in line]
        if refused and not any("Refused" in note for note in res.notes):
            res.notes.append(f"Refused with the default table in use: \"{refused[0]}\" "
                             "(the 32-bit mapping keeps working).")
    ctx.progress(len(cases), len(cases))
    res.tables.append(Table("window chosen by RAM size and offer", [
        "RAM", "offer", "result", "64-bit window", "bus addr (32)", "bus addr (64)",
        "RTAS calls", "indirect hcalls", "DMA ok"], rows, "rlllrrlrl"))
    res.plots.append(Plot("H_PUT_TCE_INDIRECT calls to set the window up", "hcalls",
                          [f"{row[0]} {row[1]}" for row in rows],
                          {"H_PUT_TCE_INDIRECT": indirect}))
    return res


#: pSeries DMA goes through TCE tables of the hypervisor, not IOMMU domains: no state
SCENARIO = Scenario("ddw", __doc__ or "", PARAMS, ("ppc64-pseries",), run, check,
                    saves_state=False)
