"""VFIO_IOMMU_MAP_DMA and UNMAP_DMA of 64 GiB into an x86-vtd container.

Guest RAM backed by THP (2M folios) and by hugetlb 1G pages; the kernel
pins and maps by physically contiguous runs, so the IOMMU gets 2M/1G
entries. A third pair maps 4K anonymous memory of a fragmented host
(faulted in and freed by runs of frames, not page by page). Each figure is
one wall-clock run (the memory is faulted in by the pin, inside the MAP
figure, as the kernel's GUP does it; hugetlb pages are taken at mmap time).
Target: <= 2 s each for the 64 GiB maps and unmaps.
"""

from __future__ import annotations

import argparse
import time

from _common import Figure, print_figures
from iommulab import Machine
from iommulab.report import format_size
from iommulab.vfio import uapi as u


def run(backing: str, gib: int, fragment: bool = False
        ) -> tuple[float, float, float, dict[int, int]]:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    if fragment:  # a used 4K frame in every free 2M region: 4K folios, short runs
        m.mem.fragment(order=9)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    size = gib << 30
    va = p.mmap(size, backing)
    t0 = time.perf_counter()
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, va, 1 << 32, size)))
    t_map = time.perf_counter() - t0
    domain = dev.group.domain if dev.group is not None else None
    hist = domain.leaf_histogram() if domain is not None else {}
    t0 = time.perf_counter()
    p.ioctl(c, u.VFIO_IOMMU_UNMAP_DMA, bytearray(u.DMA_UNMAP.pack(24, 0, 1 << 32, size)))
    t_unmap = time.perf_counter() - t0
    t0 = time.perf_counter()
    p.exit()  # the unpinned pages are freed with the address space
    t_exit = time.perf_counter() - t0
    assert m.mem.pins.pins == 0
    return t_map, t_unmap, t_exit, hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--frag-gib", type=int, default=3,
                    help="size of the 4K-anon map on a fragmented host")
    args = ap.parse_args()
    figs = []
    for backing, gib, frag in (("thp", args.gib, False), ("hugetlb-1G", args.gib, False),
                               ("anon", args.frag_gib, True)):
        t_map, t_unmap, t_exit, hist = run(backing, gib, frag)
        sizes = ", ".join(f"{n} x {format_size(s)}" for s, n in hist.items())
        what = f"{gib} GiB {backing}" + (", fragmented host" if frag else "")
        target = None if frag else 2.0
        figs.append(Figure(f"MAP_DMA {what} ({sizes})", t_map, "s", target))
        figs.append(Figure(f"UNMAP_DMA {what}", t_unmap, "s", target))
        if frag:
            figs.append(Figure(f"exit, freeing the {what}", t_exit, "s"))
    print_figures(f"bench_vfio: x86-vtd, {args.gib} GiB", figs)


if __name__ == "__main__":
    main()
