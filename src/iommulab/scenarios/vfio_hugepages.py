"""vfio-hugepages: a VM's RAM mapped through VFIO type1 under each host backing.

A VMM maps a q35 guest's RAM sections with ``VFIO_IOMMU_MAP_DMA`` from one host
buffer (:mod:`iommulab.workload.guest_ram`). The kernel pins the buffer and maps
physically contiguous runs; what IOPTE sizes the IOMMU gets depends on the
backing: THP folios, hugetlb pages, or 4K pages of a fragmented host.

Parameters:

* ``guest_ram``: the guest's RAM (x86-vtd, a q35 guest: low RAM ends at 2G, the rest
  sits at 4G; arm64-smmuv3, a virt guest: one section from 1G, above the MSI window);
* ``backings``: any of thp, hugetlb-2M, hugetlb-1G, fragmented.

Reports per backing: bytes mapped at each IOPTE size, ``iommu_map`` calls, pinned
and locked bytes, the IOPTE size histogram as a plot, and the host time of the
MAP_DMA calls (in the host section: it is not deterministic).
"""

from __future__ import annotations

from typing import Any

from ..report import format_size
from ..sizes import SZ_1G, SZ_1M, SZ_4K
from ..workload.guest_ram import BACKINGS, guest_sections, max_guest_ram, run_guest_ram
from .base import (
    Param,
    Plot,
    RunContext,
    Scenario,
    ScenarioResult,
    Table,
    UsageError,
    check_host_memory,
)

#: host bytes the model spends per 4K page of guest RAM (measured: a fragmented host keeps
#: one 4K entry per page, 180 B; THP and hugetlb runs, 17 to 23 B), and its fixed cost
_HOST_BYTES_PER_PAGE = {"fragmented": 200}
_HOST_BYTES_PER_PAGE_RUNS = 24
_HOST_BYTES_BASE = 200 << 20


def check(params: dict[str, Any], platform: str) -> None:
    """The host must hold the model's frames for the largest backing run."""
    pages = params["guest_ram"] // SZ_4K
    per_page = max(_HOST_BYTES_PER_PAGE.get(b, _HOST_BYTES_PER_PAGE_RUNS)
                   for b in params["backings"])
    check_host_memory(_HOST_BYTES_BASE + pages * per_page,
                      f"guest_ram={format_size(params['guest_ram'])}")

PARAMS = (
    Param("guest_ram", "size", 8 * SZ_1G, "the guest's RAM", quick=3 * SZ_1G,
          minimum=SZ_1M, maximum=max_guest_ram, multiple=SZ_4K,
          why="whole pages, as MAP_DMA takes; q35's low RAM runs past the VGA window at "
              "768K; the top RAM section must end inside the IOVA ranges VFIO reports "
              "(VT-d: the unit's 39-bit MGAW; SMMUv3: the 48-bit stage-1 input size)"),
    Param("backings", "str", tuple(BACKINGS), "host backings of the guest RAM buffer",
          many=True, choices=tuple(BACKINGS)),
)


def run(ctx: RunContext) -> ScenarioResult:
    guest_ram: int = ctx.params["guest_ram"]
    backings: tuple[str, ...] = ctx.params["backings"]
    try:
        sections = guest_sections(guest_ram, ctx.platform)
    except ValueError as e:
        raise UsageError(f"--set guest_ram: {e}") from None
    res = SCENARIO.result(ctx, f"VFIO type1 on {ctx.platform}: {format_size(guest_ram)} of "
                               "guest RAM under each host backing")
    results = []
    for n, backing in enumerate(backings):
        ctx.progress(n, len(backings), backing)
        results.append(run_guest_ram(backing, platform=ctx.platform, seed=ctx.seed,
                                     guest_ram=guest_ram, save_state=ctx.save_states))
    ctx.progress(len(backings), len(backings))
    sizes = sorted({s for r in results for s in r.report.iopte_bytes[0]})
    rows: list[list[object]] = [
        [f"{format_size(s)} IOPTEs", *(r.report.iopte_bytes[0].get(s, 0) // s for r in results)]
        for s in sizes]
    rows.append(["iommu_map calls", *(r.report.iommu_map_calls for r in results)])
    rows.append(["pinned", *(format_size(r.report.pinned_pages * 4096) for r in results)])
    rows.append(["locked_vm", *(format_size(r.report.locked_vm * 4096) for r in results)])
    rows.append(["unmapped at exit", *(format_size(r.unmapped) for r in results)])
    res.tables.append(Table("IOPTEs by backing", ["", *backings], rows))
    res.tables.append(Table("RAM sections (one MAP_DMA each)", ["guest physical", "length"],
                            [[f"{gpa:#x}", format_size(n)] for gpa, _, n in sections]))
    res.plots.append(Plot("Bytes mapped at each IOPTE size", "bytes", list(backings),
                          {f"{format_size(s)} IOPTEs": [float(r.report.iopte_bytes[0].get(s, 0))
                                                        for r in results] for s in sizes},
                          log=True))
    for r in results:
        key = r.backing
        for s in sizes:
            res.headline[f"{key}.iopte_{format_size(s)}"] = r.report.iopte_bytes[0].get(s, 0) // s
        res.headline[f"{key}.iommu_map_calls"] = r.report.iommu_map_calls
        res.headline[f"{key}.locked_bytes"] = r.report.locked_vm * 4096
        res.headline[f"{key}.pinned_bytes"] = r.report.pinned_pages * 4096
        res.headline[f"{key}.pins_left"] = r.pins_left
        res.host[f"{key}.map_seconds"] = round(r.map_seconds, 4)
        if r.state is not None:
            res.states[key] = r.state
    if "fragmented" in backings:
        res.notes.append("fragmented: THP asked for, but every free 2M region of the host "
                         "holds a used 4K frame.")
    res.notes.append("Pinned and locked are equal: RAM is charged to RLIMIT_MEMLOCK page by "
                     "page; MMIO would not be.")
    return res


SCENARIO = Scenario("vfio-hugepages", __doc__ or "", PARAMS, ("x86-vtd", "arm64-smmuv3"), run,
                    check)
