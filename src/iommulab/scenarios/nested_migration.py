"""nested-migration: live migration of a guest with a vIOMMU, dirty tracking on the nest parent.

The VMM maps guest RAM (THP: 2M second-stage blocks) under a nest-parent HWPT with
dirty tracking; the guest's driver keeps a first-stage table in its own RAM mapping a
ring of receive buffers (guest IOVA -> guest page) and the device is attached to the
nested HWPT over it. Each round the guest remaps ``churn`` percent of the buffers the
device used (unmap, HWPT_INVALIDATE, map a fresh page), the device writes
``writes_per_round`` packets through the guest IOVAs, and the VMM reads and clears the
parent's dirty bitmap (:mod:`iommulab.workload.nested_migration`). Ground truth, in
guest-physical 4K pages: the pages the device wrote, and the guest's table pages the
unit's stage-1 A/D updates wrote (``guest_ad=hw``: leaves mapped with A and D clear;
``preset``: Linux's first-stage code sets them, so the unit writes none). Modes:
``upstream`` (2M blocks reported whole), ``split`` (the lab's 4K split of the parent
when tracking starts, merge when it stops).

Platforms: x86-vtd (a scalable-mode unit with nesting, through iommufd). Not
arm64-smmuv3: Linux's arm-smmu-v3 nests only through 7.0's vIOMMU, over a stage-2
parent allocated with IOMMU_HWPT_ALLOC_NEST_PARENT alone; with DIRTY_TRACKING too
``arm_smmu_domain_alloc_paging_flags`` answers EOPNOTSUPP (dirty tracking is for
stage-1 domains), and 6.12 has no SMMUv3 nesting at all.

Parameters: ``guest_ram``, ``rounds``, ``writes_per_round``, ``ring``, ``churn``,
``modes``, ``guest_ad``, ``kernel``.
"""

from __future__ import annotations

from typing import Any

from ..mem.frames import MAX_ORDER
from ..report import format_size
from ..sizes import SZ_2M, SZ_4K
from ..workload.nested_migration import GUEST_AD, MODES, run_nested_migration
from .base import Param, Plot, RunContext, Scenario, ScenarioResult, Table, UsageError

#: the machine's RAM is twice the guest's plus 256M, in one buddy block at most
_MAX_GUEST_RAM = (SZ_4K << MAX_ORDER) // 2
KERNELS = ("6.12", "7.0")

PARAMS = (
    Param("guest_ram", "size", 256 << 20, "guest RAM on 2M stage-2 blocks", quick=64 << 20,
          minimum=2 * SZ_2M, maximum=_MAX_GUEST_RAM, multiple=SZ_2M,
          why="2M blocks, the first one the guest's table pool; the host's buddy "
              f"allocator gives at most order {MAX_ORDER} at once"),
    Param("rounds", "int", 4, "dirty-tracking rounds", quick=2, minimum=1,
          why="no upper bound: time grows with it"),
    Param("writes_per_round", "int", 300, "packets the device writes per round",
          quick=100, minimum=0, why="no upper bound: time grows with it"),
    Param("ring", "int", 256, "receive buffers the guest keeps mapped", quick=64,
          minimum=1, maximum=4096,
          why="at most half the guest's data pages (checked against guest_ram)"),
    Param("churn", "int", 50, "percent of the used buffers the guest remaps each round",
          minimum=0, maximum=100, why="a percentage"),
    Param("modes", "str", MODES, "tracking modes", many=True, choices=MODES),
    Param("guest_ad", "str", GUEST_AD, "stage-1 A/D: the unit sets them (hw) or the guest "
          "presets them (preset, Linux's first-stage code)", many=True, choices=GUEST_AD),
    Param("kernel", "str", "6.12", "the Linux release the host answers as",
          choices=KERNELS, why="6.12: the nested HWPT from domain_alloc_user with a "
                               "parent; 7.0: from domain_alloc_nested"),
)


def check(params: dict[str, Any], platform: str) -> None:
    """The ring must fit in half of the guest's data pages."""
    data_pages = (params["guest_ram"] - SZ_2M) // SZ_4K
    if params["ring"] > data_pages // 2:
        raise UsageError(f"--set ring={params['ring']}: above half the guest's "
                         f"{data_pages} data pages in guest_ram="
                         f"{format_size(params['guest_ram'])}")


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, f"live migration of a nested guest on {ctx.platform}: "
                               f"{format_size(p['guest_ram'])} of guest RAM, dirty tracking "
                               "on the nest parent")
    runs = [(ad, mode) for ad in p["guest_ad"] for mode in p["modes"]]
    summary: list[list[object]] = []
    per_round: dict[str, list[float]] = {}
    truth_rows: list[list[object]] = []
    for n, (ad, mode) in enumerate(runs):
        label = f"{mode} A/D {ad}"
        ctx.progress(n, len(runs), label)
        r = run_nested_migration(mode, guest_ad=ad, kernel=p["kernel"], platform=ctx.platform,
                                 guest_ram=p["guest_ram"], rounds=p["rounds"],
                                 writes_per_round=p["writes_per_round"], ring=p["ring"],
                                 churn=p["churn"], seed=ctx.seed)
        truth = r.written_pages + r.table_pages
        table_reported = sum(len(x.tables & x.reported) for x in r.rounds)
        summary.append([label, format_size(r.written_pages * SZ_4K), r.table_pages,
                        format_size(r.reported_pages * SZ_4K),
                        f"{r.reported_pages / truth:.1f}x" if truth else "-",
                        r.missed_pages, r.blocks_split, r.blocks_merged,
                        r.start_invalidations, r.stop_invalidations,
                        sum(x.read_invalidations for x in r.rounds),
                        sum(x.guest_invalidations for x in r.rounds)])
        per_round[label] = [float(len(x.reported) * SZ_4K) for x in r.rounds]
        key = f"{mode}_{ad}"
        h = res.headline
        h[f"{key}.written_pages"] = r.written_pages
        h[f"{key}.table_pages"] = r.table_pages
        h[f"{key}.table_pages_reported"] = table_reported
        h[f"{key}.resent_pages"] = r.reported_pages
        h[f"{key}.resent_bytes"] = r.reported_pages * SZ_4K
        h[f"{key}.missed_pages"] = r.missed_pages
        h[f"{key}.overshoot_pages"] = r.reported_pages - sum(
            len(x.written | x.tables) for x in r.rounds)
        h[f"{key}.blocks_split"] = r.blocks_split
        h[f"{key}.blocks_merged"] = r.blocks_merged
        h[f"{key}.start_invalidations"] = r.start_invalidations
        h[f"{key}.stop_invalidations"] = r.stop_invalidations
        h[f"{key}.read_invalidations"] = sum(x.read_invalidations for x in r.rounds)
        h[f"{key}.guest_invalidations"] = sum(x.guest_invalidations for x in r.rounds)
        h[f"{key}.pins_left"] = r.pins_left
        h[f"{key}.iommu_pages_left"] = r.iommu_pages_left
        if mode == p["modes"][0]:
            truth_rows += [[ad, i + 1, len(x.written), x.written_bytes, len(x.tables),
                            x.guest_maps, x.guest_unmaps, x.guest_inv_entries]
                           for i, x in enumerate(r.rounds)]
    ctx.progress(len(runs), len(runs))
    res.tables.append(Table(
        "dirty tracking on the nest parent, by mode and guest A/D",
        ["case", "written", "A/D table pages", "resent", "overshoot", "missed pages",
         "split", "merged", "inv at start", "inv at stop", "inv by reads", "guest inv"],
        summary))
    res.tables.append(Table(
        "ground truth per round (guest-physical 4K pages)",
        ["guest A/D", "round", "pages written", "bytes written", "A/D table pages",
         "guest maps", "guest unmaps", "invalidate entries"], truth_rows))
    res.tables.append(Table("bytes resent per round", ["case", *(
        f"round {i + 1}" for i in range(p["rounds"]))],
        [[label, *(format_size(int(v)) for v in vals)] for label, vals in per_round.items()]))
    res.plots.append(Plot("Bytes the parent's dirty bitmap made the VMM resend, per round",
                          "bytes", [f"round {i + 1}" for i in range(p["rounds"])], per_round,
                          log=True))
    res.notes.append("A/D table pages: guest first-stage table pages the unit wrote an "
                     "accessed/dirty update into, through stage 2; they are dirty in the "
                     "parent and resent like data. Linux's first-stage code presets A and D "
                     "(intel/iommu.c __domain_mapping), so a Linux guest causes none.")
    res.notes.append("inv: invalidation descriptors the unit carried out. At start and stop: "
                     "the SSADE change (PASID cache and IOTLB of the nested DID) and, in "
                     "split mode, one flush of the span the lab's split or merge changed. "
                     "By reads: the IOTLB sync after each GET_DIRTY_BITMAP. Guest: the "
                     "PASID-based IOTLB invalidations its HWPT_INVALIDATE entries became.")
    return res


#: arm-smmu-v3 nests only through 7.0's vIOMMU, over a stage-2 parent that cannot track
#: dirty pages: arm_smmu_domain_alloc_paging_flags takes NEST_PARENT alone, DIRTY_TRACKING
#: only for stage 1, and refuses the two together (EOPNOTSUPP); 6.12 has no SMMUv3 nesting
NOT_ON = (("arm64-smmuv3", "Linux's arm-smmu-v3 refuses a nest parent with dirty "
           "tracking (IOMMU_HWPT_ALLOC_NEST_PARENT | DIRTY_TRACKING is EOPNOTSUPP in 7.0's "
           "arm_smmu_domain_alloc_paging_flags; 6.12 has no SMMUv3 nesting), so a VMM "
           "cannot track a nested guest's DMA there"),)

SCENARIO = Scenario("nested-migration", __doc__ or "", PARAMS, ("x86-vtd",), run, check=check,
                    saves_state=False, not_on=NOT_ON)
