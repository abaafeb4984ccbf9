"""noncoherent-flush: a GPU that does not snoop, through iommufd, under each cache flush policy.

A VMM on x86-vtd maps guest RAM into one IOAS shared by a coherent NIC (behind a
DMAR unit with snoop control) and two GPUs whose HWPTs are non-coherent, and
streams buffers through them while devices attach, detach and re-plug
(:mod:`iommulab.workload.noncoherent`). Mainline (``none``) never flushes CPU
caches for non-coherent domains; the lab's three policies flush at map and unpin
and differ in how they track which pages need it: ``sticky``, ``count`` and
``every``.

Reports per policy: device reads of stale data, pages unpinned with unflushed
device writes, flush calls and pages flushed (by flush point).

Parameters: ``rounds`` (buffers per stream phase), ``ram`` (guest RAM),
``buffer_pages``, ``policies``.
"""

from __future__ import annotations

from typing import Any

from ..iommufd.cache_flush import POLICIES
from ..workload.noncoherent import WORKLOAD_RAM, run_noncoherent
from .base import Param, Plot, RunContext, Scenario, ScenarioResult, Table, UsageError

#: guest RAM plus one buffer: the workload machine's RAM less 4M for tables and rings
MAX_RAM = WORKLOAD_RAM - (4 << 20)


def check(params: dict[str, Any], platform: str) -> None:
    """Guest RAM and one buffer are populated at once on the workload's machine."""
    need = params["ram"] + params["buffer_pages"] * 4096
    if need > MAX_RAM:
        raise UsageError(f"--set ram + buffer_pages: {need >> 20}M of RAM and buffer is "
                         f"above the maximum {MAX_RAM >> 20}M (the workload machine's "
                         f"{WORKLOAD_RAM >> 30}G of RAM, less 4M for page tables)")

PARAMS = (
    Param("rounds", "int", 16, "buffers per stream phase", quick=4, minimum=0,
          why="no upper bound: time grows with it"),
    Param("ram", "size", 4 << 20, "guest RAM in the IOAS", minimum=1 << 16,
          maximum=MAX_RAM, multiple=1 << 12,
          why="whole pages; it and one buffer fit the workload machine's "
              f"{WORKLOAD_RAM >> 30}G of RAM, with 4M for page tables"),
    Param("buffer_pages", "int", 4, "4K pages per streamed buffer", minimum=1,
          maximum=MAX_RAM >> 12, why="a buffer fits the workload machine's RAM beside the "
          "guest's"),
    Param("policies", "str", POLICIES, "cache flush policies", many=True, choices=POLICIES),
)


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, "iommufd with a GPU that does not snoop: the same VMM workload "
                               "under each cache flush policy")
    results = []
    for n, policy in enumerate(p["policies"]):
        ctx.progress(n, len(p["policies"]), policy)
        results.append(run_noncoherent(policy, rounds=p["rounds"], ram=p["ram"],
                                       buffer_pages=p["buffer_pages"],
                                       save_state=ctx.save_states))
        res.states.update({f"{policy}.{k}": v for k, v in results[-1].states.items()})
    ctx.progress(len(results), len(results))
    res.tables.append(Table("flush policies side by side", [
        "policy", "stale reads", "unflushed unpins", "flushes", "pages flushed", "by point"],
        [[r.policy, r.stale_reads, r.unflushed_unpins, r.flush_calls, r.flush_pages,
          ", ".join(f"{k} {v}" for k, v in sorted(r.flush_pages_by_point.items())) or "-"]
         for r in results], "lrrrrl"))
    for r in results:
        res.headline[f"{r.policy}.stale_reads"] = r.stale_reads
        res.headline[f"{r.policy}.unflushed_unpins"] = r.unflushed_unpins
        res.headline[f"{r.policy}.flush_calls"] = r.flush_calls
        res.headline[f"{r.policy}.flush_pages"] = r.flush_pages
    res.plots.append(Plot("Pages flushed and what went wrong", "count",
                          [r.policy for r in results], {
                              "pages flushed": [float(r.flush_pages) for r in results],
                              "stale reads": [float(r.stale_reads) for r in results],
                              "unflushed unpins": [float(r.unflushed_unpins) for r in results]},
                          log=True))
    safe = [r for r in results if not r.stale_reads and not r.unflushed_unpins]
    if safe:
        best = min(safe, key=lambda r: r.flush_pages)
        res.headline["fewest_pages_safe_policy"] = best.policy
        res.notes.append(f"Fewest pages flushed with no stale read and no unflushed unpin: "
                         f"{best.policy} ({best.flush_pages} pages).")
    res.notes.append("none is mainline.")
    return res


SCENARIO = Scenario("noncoherent-flush", __doc__ or "", PARAMS, ("x86-vtd",), run, check)
