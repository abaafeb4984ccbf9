"""The ``iommulab`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .report import format_size, format_table
from .workload.bbm_window import BbmWindowResult, run_bbm_window
from .workload.ddw import DEMO_CASES, DdwResult, run_ddw
from .workload.guest_ram import BACKINGS as GUEST_BACKINGS
from .workload.guest_ram import GUEST_RAM, GUEST_SECTIONS, GuestRamResult, run_guest_ram
from .workload.migration import MigrationResult, run_migration
from .workload.noncoherent import NoncoherentResult, compare_flush_policies
from .workload.pgtable_tour import TourResult, run_pgtable_tour
from .workload.streaming import StreamingResult, run_streaming

__all__ = ["main"]


def _render_tour(r: TourResult) -> str:
    out = [f"iommulab demo: one paging domain, {r.fmt} (seed {r.seed})", ""]
    rows = []
    for reg in r.regions:
        sizes = ", ".join(f"{n} x {format_size(s)}" for s, n in sorted(reg.leaves.items()))
        rows.append([reg.name, f"{reg.iova:#x}", format_size(reg.size), reg.runs, sizes])
    out.append(format_table(["region", "iova", "size", "runs", "IOPTEs"], rows, "lrrrl"))
    out.append("")
    rows = [[format_size(size), count, format_size(size * count)]
            for size, count in r.leaf_histogram.items()]
    total = sum(s * c for s, c in r.leaf_histogram.items())
    rows.append(["total", sum(r.leaf_histogram.values()), format_size(total)])
    out.append(format_table(["IOPTE size", "entries", "bytes mapped"], rows))
    out.append("")
    tables = ", ".join(f"level {lvl}: {n}" for lvl, n in r.tables_by_level.items())
    out.append(f"table memory: {format_size(r.table_bytes)} in "
               f"{sum(r.tables_by_level.values())} tables ({tables}); "
               f"{r.table_bytes / total * 1e6:.1f} bytes per MiB mapped")
    out.append(f"map_pages calls: {r.pgtable.map_pages}, unmap_pages calls: "
               f"{r.pgtable.unmap_pages}, iotlb syncs: {r.tlb.iotlb_sync}, "
               f"leaves invalidated: {r.tlb.add_page}, walk flushes: {r.tlb.flush_walk}")
    out.append(f"unmapped {format_size(r.unmapped)} afterwards; all table memory freed")
    out.append("")
    reg = r.regions[-1]
    out.append(f"walk of {reg.iova:#x} ({reg.name}):")
    out.extend(f"  level {lvl}: {desc}" for lvl, desc in reg.walk)
    return "\n".join(out)


def _exact_size(n: int) -> str:
    """``n`` in the largest binary unit that divides it (no rounding)."""
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if n and not n % (1 << shift):
            return f"{n >> shift}{unit}"
    return str(n)


def _render_guest_ram(results: list[GuestRamResult]) -> str:
    sections = ", ".join(f"[{gpa:#x}, {gpa + n:#x})" for gpa, _, n in GUEST_SECTIONS)
    out = [f"VFIO type1 on x86-vtd: a q35 guest's {format_size(GUEST_RAM)} of RAM, mapped "
           "with one MAP_DMA per section", f"{sections},", "from one host buffer of each "
           "backing:"]
    sizes = sorted({s for r in results for s in r.report.iopte_bytes[0]})
    rows: list[list[object]] = [
        [f"{format_size(s)} IOPTEs", *(_exact_size(r.report.iopte_bytes[0].get(s, 0))
                                       for r in results)] for s in sizes]
    rows.append(["iommu_map calls", *(r.report.iommu_map_calls for r in results)])
    rows.append(["pinned = locked_vm", *(_exact_size(r.report.locked_vm * 4096)
                                         for r in results)])
    out.append(format_table(["bytes mapped at", *(r.backing for r in results)], rows))
    out.append("fragmented: THP asked for, but every free 2M region of the host holds a "
               "used 4K frame.")
    return "\n".join(out)


def _render_migration(runs: dict[str, MigrationResult]) -> str:
    up, split, fix = runs["upstream"], runs["split"], runs["sync_fix"]
    out = [f"live migration through the SMMUv3 model: {format_size(up.guest_ram)} of guest "
           f"RAM on 2M blocks, a device writing each round (seed {up.seed})", ""]
    rows = []
    for n, (a, b, c) in enumerate(zip(up.rounds, split.rounds, fix.rounds, strict=True)):
        rows.append([n + 1, format_size(a.written_pages * 4096),
                     format_size(a.reported_pages * 4096), a.missed_pages,
                     format_size(b.reported_pages * 4096), b.missed_pages,
                     format_size(c.reported_pages * 4096), c.missed_pages])
    rows.append(["total", format_size(sum(r.written_pages for r in up.rounds) * 4096),
                 format_size(up.reported_bytes), up.missed_pages,
                 format_size(split.reported_bytes), split.missed_pages,
                 format_size(fix.reported_bytes), fix.missed_pages])
    out.append(format_table(
        ["round", "written", "2M: resent", "missed", "split 4K: resent", "missed",
         "+sync fix: resent", "missed"], rows))
    out.append("")
    out.append(f"split/merge: {split.blocks_split} blocks split when tracking started, "
               f"{split.blocks_merged} merged back when it stopped")
    out.append("written: 4K pages the device wrote (ground truth); resent: pages the dirty "
               "bitmap reported;")
    out.append("missed: written but not reported. The model's IOTLB keeps the dirty state of "
               "entries it wrote")
    out.append("through (the architecture allows it) and Linux 7.0's arm_smmu_iotlb_sync "
               "skips a gather with no")
    out.append("page size, so read_and_clear_dirty never invalidates them; the lab's sync fix "
               "does.")
    return "\n".join(out)


def _render_bbm(results: list[BbmWindowResult]) -> str:
    r0 = results[0]
    out = [f"a device stream over every 4K page of {format_size(r0.guest_ram)} while its 2M "
           f"blocks are split and merged,", f"{r0.accesses} accesses at each BBM level:"]
    rows = [[f"BBM level {r.bbm_level}", r.faults, r.wrong,
             f"{r.events} (+{r.events_lost} lost)" if r.events_lost else r.events]
            for r in results]
    out.append(format_table(["", "transient faults", "wrong address", "fault events"], rows))
    return "\n".join(out)


def _render_streaming(results: list[StreamingResult]) -> str:
    r0 = results[0]
    out = [f"a NIC streaming {r0.packets} receive buffers of {r0.buffer_size} bytes through "
           "the DMA API and the SMMUv3:"]
    rows = [[r.mode, r.iotlb_syncs, r.flush_all, r.tlbi_commands, r.cmd_syncs,
             r.stale_pages_max, f"{r.stale_ns_max / 1000:.0f} us",
             f"{r.stale_ns_mean / 1000:.0f} us", r.exposed_bytes // r.packets]
            for r in results]
    out.append(format_table(
        ["mode", "range syncs", "flush-all", "TLBI cmds", "CMD_SYNC", "stale pages",
         "stale max", "stale mean", "exposed B/map"], rows))
    out.append("stale: unmapped IOVAs the device could still read (stale IOTLB entries), "
               "and for how long after")
    out.append("dma_unmap_page returned; exposed: bytes of each mapped page beyond the buffer "
               "the device could read.")
    return "\n".join(out)


def _render_noncoherent(results: list[NoncoherentResult]) -> str:
    out = ["iommufd with a GPU that does not snoop (two non-coherent HWPTs, one coherent): "
           "the same VMM workload under each cache flush policy"]
    rows = [[r.policy, r.stale_reads, r.unflushed_unpins, r.flush_calls, r.flush_pages,
             ", ".join(f"{k} {v}" for k, v in sorted(r.flush_pages_by_point.items())) or "-"]
            for r in results]
    out.append(format_table(["policy", "stale reads", "unflushed unpins", "flushes",
                             "pages flushed", "by point"], rows, "lrrrrl"))
    safe = [r for r in results if r.policy != "none"]
    best = min(safe, key=lambda r: r.flush_pages)
    out.append(f"none is mainline. Fewest pages flushed with no stale read and no unflushed "
               f"unpin: {best.policy} ({best.flush_pages} pages).")
    return "\n".join(out)


def _render_ddw(results: list[DdwResult]) -> str:
    out = ["ppc64-pseries: a driver maps a buffer under a 32-bit mask, then asks for 64 bits "
           "(enable_ddw on each hypervisor offer)"]
    rows = [[r.case.name, r.mode, r.window, f"{r.dma_before:#x}", f"{r.dma_after:#x}",
             " ".join(f"{k} {v}" for k, v in sorted(r.rtas.items())),
             r.hcalls.get("H_PUT_TCE_INDIRECT", 0), "yes" if r.dma_ok else "NO"]
            for r in results]
    out.append(format_table(["offer", "result", "64-bit window", "bus addr (32)",
                             "bus addr (64)", "RTAS calls", "indirect hcalls", "DMA ok"],
                            rows, "lllrrlrl"))
    refused = [line for r in results for line in r.log if "in use" in line]
    if refused:
        out.append(f"Refused with the default table in use: \"{refused[0]}\" "
                   "(the 32-bit mapping keeps working).")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iommulab", description=(
        "An executable, faithful model of the Linux IOMMU stack."))
    parser.add_argument("--version", action="version", version=f"iommulab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="map a few GiB with mixed page sizes, guest RAM "
                          "through VFIO under THP, hugetlb and fragmented backing, a short "
                          "migration with dirty tracking, streaming DMA strict vs lazy, "
                          "cache flush policies for non-coherent DMA, pSeries dynamic DMA windows")
    demo.add_argument("--seed", type=int, default=0, help="seed for the fragmentation")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print(_render_tour(run_pgtable_tour(seed=args.seed)))
        print()
        print(_render_guest_ram([run_guest_ram(b, seed=args.seed) for b in GUEST_BACKINGS]))
        print()
        print(_render_migration({mode: run_migration(mode, seed=args.seed)
                                 for mode in ("upstream", "split", "sync_fix")}))
        print()
        print(_render_bbm([run_bbm_window(level, guest_ram=32 << 20) for level in (0, 1, 2)]))
        print()
        print(_render_streaming([run_streaming(mode) for mode in ("strict", "lazy")]))
        print()
        print(_render_noncoherent(compare_flush_policies()))
        print()
        print(_render_ddw([run_ddw(c) for c in DEMO_CASES]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
