"""VFIO_IOMMU_MAP_DMA, UNMAP_DMA and DIRTY_PAGES GET_BITMAP into an x86-vtd container.

Guest RAM backed by THP (2M folios) and by hugetlb 1G pages; the kernel pins and maps by
physically contiguous runs, so the IOMMU gets 2M/1G entries. THP is mapped "prefaulted"
(MAP_POPULATE: already touched) and "first touch" (faulted in by the pin, inside the
MAP figure, as the kernel's GUP does it); hugetlb's first map and a second map of the
same pages after an unmap. A last group maps 4K anonymous memory of a fragmented host
(faulted in and freed by runs of frames, not page by page). Each figure is the median
wall time over ``--repeat`` fresh machines, process CPU beside it, at the largest of
``--sizes``; the sweep then prints the cost per GiB at every size, so that a cost that
grows faster than the size shows. Targets (issue 22, at 64 GiB): MAP_DMA THP <= 0.25 s,
hugetlb-1G <= 0.05 s, UNMAP_DMA <= 0.25 s.
"""

from __future__ import annotations

import argparse
import functools

from _bulk import Container, container, sizes_arg, timed
from _common import Figure, print_figures
from iommulab.report import format_size
from iommulab.vfio import uapi as u

START = u.VFIO_IOMMU_DIRTY_PAGES_FLAG_START


def _thp_pre(gib: int) -> Container:
    return container("thp", gib, populate=True)


def _thp(gib: int) -> Container:
    return container("thp", gib)


def _huge(gib: int) -> Container:
    return container("hugetlb-1G", gib)


def _remap(ct: Container) -> None:
    ct.map()
    ct.unmap()


def _tracking(ct: Container) -> None:
    ct.map()
    ct.extra["bitmap"] = ct.p.mmap(u.DIRTY_BITMAP_BYTES(ct.size >> 12) + 4096,
                                   populate=True)
    ct.dirty(START)


def _unmap_after_map(ct: Container) -> None:
    ct.map()


# (name, backing setup, untimed step first, timed step, target in s at 64 GiB)
CASES = (
    ("MAP_DMA {} THP prefaulted", _thp_pre, None, Container.map, 0.25),
    ("MAP_DMA {} THP first touch", _thp, None, Container.map, 0.25),
    ("UNMAP_DMA {} THP", _thp, _unmap_after_map, Container.unmap, 0.25),
    ("MAP_DMA {} hugetlb-1G first map", _huge, None, Container.map, 0.05),
    ("MAP_DMA {} hugetlb-1G second map", _huge, _remap, Container.map, 0.05),
    ("UNMAP_DMA {} hugetlb-1G", _huge, _unmap_after_map, Container.unmap, 0.25),
    ("DIRTY GET_BITMAP {} THP", _thp, _tracking, Container.get_bitmap, None),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=sizes_arg, default=[64],
                    help="GiB of guest RAM, comma separated (a sweep); the figures are "
                         "at the largest, the sweep at each")
    ap.add_argument("--gib", type=int, default=None, help="one size (same as --sizes N)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frag-gib", type=int, default=3,
                    help="size of the 4K-anon map on a fragmented host")
    args = ap.parse_args()
    sizes: list[int] = [args.gib] if args.gib else args.sizes
    top = sizes[-1]
    figs = []
    per_gib: dict[str, list[tuple[int, float, float]]] = {}
    for name, setup, before, step, target in CASES:
        for gib in sizes:
            wall, cpu = timed(functools.partial(setup, gib), step, args.repeat, before)
            per_gib.setdefault(name, []).append((gib, wall, cpu))
            if gib == top:
                figs.append(Figure(name.format(f"{gib} GiB"), wall * 1e3, "ms",
                                   target * 1e3 if target and gib == 64 else None,
                                   cpu=cpu * 1e3))
    ct = container("thp", top)
    ct.map()
    sizes_txt = ", ".join(f"{n} x {format_size(s)}" for s, n in ct.leaf_histogram().items())
    ct.unmap()
    ct.close()
    ct = container("hugetlb-1G", top)
    ct.map()
    sizes_txt += "; " + ", ".join(f"{n} x {format_size(s)}"
                                  for s, n in ct.leaf_histogram().items())
    ct.unmap()
    ct.close()
    frag = args.frag_gib
    wall, cpu = timed(lambda: container("anon", frag, fragment=True), Container.map, 1)
    figs.append(Figure(f"MAP_DMA {frag} GiB anon, fragmented host", wall, "s", cpu=cpu))
    wall, cpu = timed(lambda: container("anon", frag, fragment=True), Container.unmap, 1,
                      _unmap_after_map)
    figs.append(Figure(f"UNMAP_DMA {frag} GiB anon, fragmented host", wall, "s", cpu=cpu))

    wall, cpu = timed(lambda: container("anon", frag, fragment=True), Container.close, 1,
                      _remap)
    figs.append(Figure(f"exit, freeing the {frag} GiB anon, fragmented host", wall, "s",
                       cpu=cpu))
    print_figures(f"bench_vfio: x86-vtd, {top} GiB, median of {args.repeat} "
                  f"(IOPTEs: {sizes_txt})", figs)
    if len(sizes) > 1:
        sweep = []
        for name, rows in per_gib.items():
            for gib, wall, cpu in rows:
                sweep.append(Figure(name.format(f"{gib} GiB") + ", per GiB", wall / gib * 1e3,
                                    "ms", cpu=cpu / gib * 1e3))
        print_figures(f"sweep over {','.join(map(str, sizes))} GiB: cost per GiB (a rise "
                      "with the size is a super-linear cost)", sweep)


if __name__ == "__main__":
    main()
