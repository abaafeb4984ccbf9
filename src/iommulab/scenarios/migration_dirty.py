"""migration-dirty: dirty tracking for live migration, with and without split/merge.

Guest RAM sits on 2M blocks of a dirty-tracking SMMUv3 stage-1 domain. Each round
a NIC-like device writes ``writes_per_round`` packets (the write rate), then the VMM
reads and clears the dirty bits as iommufd does and resends what they report
(:mod:`iommulab.workload.migration`). The ground truth is the set of 4K pages the
device wrote. Modes: ``upstream`` (blocks reported whole), ``split`` (the lab's
4K split when tracking starts, merge when it stops), ``sync_fix`` (split, and
``iotlb_sync`` invalidates what the dirty read cleaned).

The split and merge run at each break-before-make level in ``bbm_levels``: the
invalidations they cost come from the same run, and the transient faults from a
device stream over every 4K page of ``bbm_ram`` during the split and merge steps
(:mod:`iommulab.workload.bbm_window`).

Parameters: ``guest_ram``, ``rounds``, ``writes_per_round``, ``modes``,
``bbm_levels``, ``bbm_ram``.
"""

from __future__ import annotations

from ..mem.frames import MAX_ORDER
from ..report import format_size
from ..sizes import SZ_2M, SZ_4K
from ..workload.bbm_window import run_bbm_window
from ..workload.migration import run_migration
from .base import (
    Param,
    Plot,
    RunContext,
    Scenario,
    ScenarioResult,
    Table,
)

#: (1 << MAX_ORDER) 4K pages hold twice the guest RAM: 512M
_MAX_GUEST_RAM = (SZ_4K << MAX_ORDER) // 2

MODES = ("upstream", "split", "sync_fix")

PARAMS = (
    Param("guest_ram", "size", 256 << 20, "guest RAM on 2M blocks", quick=64 << 20,
          minimum=SZ_2M, maximum=_MAX_GUEST_RAM, multiple=SZ_2M,
          why="2M blocks; the workload takes RAM as one buddy block of twice its size "
              f"(to align it to 2M, not 1G), and the largest block is order {MAX_ORDER}"),
    Param("rounds", "int", 4, "dirty-tracking rounds", quick=2, minimum=1,
          why="no upper bound: time grows with it"),
    Param("writes_per_round", "int", 300, "packets the device writes per round", quick=100,
          minimum=0, why="no upper bound: time grows with it"),
    Param("modes", "str", MODES, "tracking modes", many=True, choices=MODES),
    Param("bbm_levels", "int", (0, 1, 2), "break-before-make levels of split and merge",
          many=True, choices=(0, 1, 2), why="SMMUv3 IDR3.BBML levels 0, 1 and 2"),
    Param("bbm_ram", "size", 32 << 20, "RAM the transient-fault stream covers",
          quick=8 << 20, minimum=SZ_2M, maximum=_MAX_GUEST_RAM, multiple=SZ_2M,
          why="2M blocks, at most guest_ram's maximum; the stream touches every 4K page "
              "at each step, so time grows with it"),
)


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, f"live migration through the SMMUv3 model: "
                               f"{format_size(p['guest_ram'])} of guest RAM on 2M blocks")
    runs = [(mode, None if mode == "upstream" else level) for mode in p["modes"]
            for level in ((None,) if mode == "upstream" else p["bbm_levels"])]
    summary: list[list[object]] = []
    per_round: dict[str, list[float]] = {}
    faults: dict[int, int] = {}
    for n, (mode, level) in enumerate(runs):
        label = mode if level is None else f"{mode} BBM{level}"
        ctx.progress(n, len(runs), label)
        r = run_migration(mode, guest_ram=p["guest_ram"], rounds=p["rounds"],
                          writes_per_round=p["writes_per_round"], seed=ctx.seed,
                          bbm_level=level, save_state=ctx.save_states)
        if level is not None and level not in faults:
            faults[level] = run_bbm_window(level, guest_ram=p["bbm_ram"]).faults
        written = sum(x.written_pages for x in r.rounds) * 4096
        summary.append([label, format_size(written), format_size(r.reported_bytes),
                        f"{r.reported_bytes / written:.1f}x" if written else "-",
                        r.missed_pages, r.blocks_split, r.blocks_merged, r.tlbi_commands,
                        faults[level] if level is not None else 0])
        per_round[label] = [float(x.reported_pages * 4096) for x in r.rounds]
        key = label.replace(" ", "_")
        res.headline[f"{key}.resent_bytes"] = r.reported_bytes
        res.headline[f"{key}.missed_pages"] = r.missed_pages
        res.headline[f"{key}.blocks_split"] = r.blocks_split
        res.headline[f"{key}.blocks_merged"] = r.blocks_merged
        res.headline[f"{key}.tlbi_commands"] = r.tlbi_commands
        res.headline[f"{key}.frames_left"] = r.frames_left
        if level is not None:
            res.headline[f"{key}.transient_faults"] = faults[level]
        if r.state is not None:
            res.states[key] = r.state
        if n == 0:
            res.headline["written_bytes"] = written
            res.tables.append(Table("ground truth per round", ["round", "4K pages written",
                                                                "bytes written"],
                                    [[i + 1, x.written_pages, x.written_bytes]
                                     for i, x in enumerate(r.rounds)]))
    ctx.progress(len(runs), len(runs))
    res.tables.insert(0, Table("dirty tracking by mode and BBM level",
                               ["mode", "written", "resent", "overshoot", "missed pages",
                                "split", "merged", "TLBI cmds", "transient faults"], summary))
    res.tables.append(Table("bytes resent per round", ["mode", *(
        f"round {i + 1}" for i in range(p["rounds"]))],
        [[label, *(format_size(int(v)) for v in vals)] for label, vals in per_round.items()]))
    res.plots.append(Plot("Bytes the dirty bitmap made the VMM resend, per round", "bytes",
                          [f"round {i + 1}" for i in range(p["rounds"])], per_round, log=True))
    res.notes.append("missed: written but not reported. The model's IOTLB keeps the dirty "
                     "state of entries it wrote through, and arm_smmu_iotlb_sync (6.12 and 7.0) "
                     "skips a gather with no page size, so read_and_clear_dirty never "
                     "invalidates them; the lab's sync fix does.")
    res.notes.append("transient faults: BBM level 0 breaks each block before making the "
                     "table, so a device access in that window faults; levels 1 and 2 "
                     "replace entries in place.")
    return res


SCENARIO = Scenario("migration-dirty", __doc__ or "", PARAMS, ("arm64-smmuv3",), run)
