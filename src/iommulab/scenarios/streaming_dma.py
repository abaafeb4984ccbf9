"""streaming-dma: a NIC streaming receive buffers through the DMA API, strict vs lazy.

Buffers of ``buffer_size`` bytes are packed into 4K pages, mapped with
``dma_map_page``, written by the device through the SMMUv3 and unmapped, one every
``interval_ns`` (:mod:`iommulab.workload.streaming`). Strict mode invalidates the
IOTLB on every unmap; lazy mode queues the IOVA and flushes the whole domain when
the flush queue is full or its timer (``hz``) fires.

Reports per mode: IOTLB hit rate, invalidation commands per page, the IOVA
allocator's per-CPU cache hits against tree allocations, and the stale window: how
long the device could still read an unmapped IOVA, from real translations through
stale IOTLB entries.

Parameters: ``packets``, ``buffer_size``, ``interval_ns``, ``hz``, ``modes``.
"""

from __future__ import annotations

from ..workload.streaming import run_streaming
from .base import (
    Param,
    Plot,
    RunContext,
    Scenario,
    ScenarioResult,
    Table,
)

PARAMS = (
    Param("packets", "int", 2000, "receive buffers streamed", quick=300, minimum=1,
          why="no upper bound: time grows with it"),
    Param("buffer_size", "int", 1536, "bytes per buffer", minimum=1, maximum=4096,
          why="buffers are packed into 4K pages, one dma_map_page each"),
    Param("interval_ns", "int", 5000, "simulated time between packets", minimum=1),
    Param("hz", "int", 250, "kernel HZ (the lazy flush timer is 10 ms of jiffies)",
          choices=(100, 250, 300, 1000), why="the HZ choices of kernel/Kconfig.hz"),
    Param("modes", "str", ("strict", "lazy"), "invalidation modes", many=True,
          choices=("strict", "lazy")),
)


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, f"a NIC streaming {p['packets']} receive buffers of "
                               f"{p['buffer_size']} bytes through the DMA API and the SMMUv3")
    rows: list[list[object]] = []
    for n, mode in enumerate(p["modes"]):
        ctx.progress(n, len(p["modes"]), mode)
        r = run_streaming(mode, packets=p["packets"], buffer_size=p["buffer_size"],
                          interval_ns=p["interval_ns"], hz=p["hz"],
                          save_state=ctx.save_states)
        if r.state is not None:
            res.states[mode] = r.state
        hit_rate = r.iotlb_hits / r.iotlb_lookups if r.iotlb_lookups else 0.0
        rows.append([mode, f"{hit_rate:.1%}", r.iotlb_syncs, r.flush_all, r.tlbi_commands,
                     f"{r.tlbi_commands / r.packets:.2f}", r.iova_rcache_hits,
                     r.iova_tree_allocs, r.stale_pages_max, f"{r.stale_ns_max / 1000:.0f} us",
                     f"{r.stale_ns_mean / 1000:.0f} us", r.exposed_bytes // r.packets])
        res.headline.update({
            f"{mode}.iotlb_hit_rate": round(hit_rate, 4),
            f"{mode}.tlbi_per_page": round(r.tlbi_commands / r.packets, 4),
            f"{mode}.flush_all": r.flush_all,
            f"{mode}.tlbi_commands": r.tlbi_commands,
            f"{mode}.iotlb_syncs": r.iotlb_syncs,
            f"{mode}.iova_rcache_hits": r.iova_rcache_hits,
            f"{mode}.iova_tree_allocs": r.iova_tree_allocs,
            f"{mode}.stale_pages_max": r.stale_pages_max,
            f"{mode}.stale_reads": r.stale_reads,
            f"{mode}.stale_ns_max": r.stale_ns_max,
            f"{mode}.exposed_bytes_per_map": r.exposed_bytes // r.packets,
        })
    ctx.progress(len(p["modes"]), len(p["modes"]))
    res.tables.append(Table("strict vs lazy", [
        "mode", "IOTLB hits", "range syncs", "flush-all", "TLBI cmds", "TLBI/page",
        "IOVA rcache hits", "IOVA tree allocs", "stale pages", "stale max", "stale mean",
        "exposed B/map"], rows))
    modes = list(p["modes"])
    res.plots.append(Plot("Invalidation commands and stale reads", "count", modes, {
        "TLBI commands": [float(res.headline[f"{m}.tlbi_commands"]) for m in modes],
        "stale reads": [float(res.headline[f"{m}.stale_reads"]) for m in modes]}, log=True))
    res.notes.append("stale: unmapped IOVAs the device could still read, and for how long "
                     "after dma_unmap_page returned; exposed: bytes of each mapped page beyond "
                     "the buffer the device could read.")
    return res


SCENARIO = Scenario("streaming-dma", __doc__ or "", PARAMS, ("arm64-smmuv3",), run)
