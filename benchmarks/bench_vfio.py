"""VFIO_IOMMU_MAP_DMA and UNMAP_DMA of 64 GiB into an x86-vtd container.

Guest RAM backed by THP (2M folios) and by hugetlb 1G pages; the kernel
pins and maps by physically contiguous runs, so the IOMMU gets 2M/1G
entries. Each figure is one wall-clock run (the memory is faulted in by the
pin, inside the THP figure, as the kernel's GUP does it; hugetlb pages are
taken at mmap time). Target: <= 2 s each.
"""

from __future__ import annotations

import argparse
import time

from _common import Figure, print_figures
from iommulab import Machine
from iommulab.vfio import uapi as u


def run(backing: str, gib: int) -> tuple[float, float, dict[int, int]]:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
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
    p.exit()
    assert m.mem.pins.pins == 0
    return t_map, t_unmap, hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    args = ap.parse_args()
    figs = []
    for backing in ("thp", "hugetlb-1G"):
        t_map, t_unmap, hist = run(backing, args.gib)
        sizes = ", ".join(f"{n} x {s >> 20}M" for s, n in hist.items())
        figs.append(Figure(f"MAP_DMA {args.gib} GiB {backing} ({sizes})", t_map, "s", 2))
        figs.append(Figure(f"UNMAP_DMA {args.gib} GiB {backing}", t_unmap, "s", 2))
    print_figures(f"bench_vfio: x86-vtd, {args.gib} GiB", figs)


if __name__ == "__main__":
    main()
