"""IOMMU_IOAS_MAP / UNMAP of 64 GiB of THP memory into an IOAS with two domains, and a
dirty-bitmap read over 64 GiB.

x86-vtd: two devices behind two DMAR units, one without snoop control (its
domain cannot enforce coherency) and one with it, each on its own
automatic HWPT of one IOAS: every page is pinned once and mapped into both
domains. arm64-smmuv3: one device on a dirty-tracking HWPT;
HWPT_GET_DIRTY_BITMAP over the whole 64 GiB after the device wrote one byte
in every 2M block after SET_DIRTY_TRACKING split the blocks to 4K (the lab's
``Machine.dirty_granule``), and IOAS_UNMAP of that split domain (``--blocks``: also
with the blocks kept).
Each figure is the median of ``--repeat`` runs, wall and process CPU (the memory is
faulted in by the pin, inside the MAP figure). Targets (issue 22, at 64 GiB): MAP and
UNMAP <= 0.4 s, GET_DIRTY_BITMAP of the split domain <= 0.3 s; the rest <= 2 s.
``--sizes 1,16,64`` repeats the table per size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from _common import Figure, print_figures
from iommulab import Machine, Process
from iommulab.iommufd import uapi as u
from iommulab.vfio import uapi as v

IOVA = 1 << 32
Timing = tuple[float, float]  # wall, process CPU seconds


def _timed(run: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _bind(p: Process, iommufd: int, n: int, pt_id: int, flags: int = 0) -> int:
    cdev = p.open(f"/dev/vfio/devices/vfio{n}")
    out = bytearray(v.BIND_IOMMUFD.pack(16, 0, iommufd, 0))
    p.ioctl(cdev, v.VFIO_DEVICE_BIND_IOMMUFD, out)
    if flags:  # a HWPT of its own, with these flags
        devid = v.BIND_IOMMUFD.unpack(out)[3]
        hw = bytearray(u.HWPT_ALLOC.pack(48, flags, devid, pt_id, 0, 0, 0, 0, 0, 0, 0))
        p.ioctl(iommufd, u.IOMMU_HWPT_ALLOC, hw)
        pt_id = u.HWPT_ALLOC.unpack(hw)[4]
    att = bytearray(v.ATTACH_IOMMUFD_PT.pack(16, 0, pt_id, 0))
    p.ioctl(cdev, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, att)
    return int(v.ATTACH_IOMMUFD_PT.unpack(att)[2])


def _ioas(p: Process, iommufd: int) -> int:
    out = bytearray(u.IOAS_ALLOC.pack(12, 0, 0))
    p.ioctl(iommufd, u.IOMMU_IOAS_ALLOC, out)
    return int(u.IOAS_ALLOC.unpack(out)[2])


def _map(p: Process, iommufd: int, ioas: int, va: int, size: int) -> Timing:
    return _timed(lambda: p.ioctl(iommufd, u.IOMMU_IOAS_MAP, bytearray(
        u.IOAS_MAP.pack(40, 7, ioas, 0, va, size, IOVA))))


def _unmap(p: Process, iommufd: int, ioas: int, size: int) -> Timing:
    return _timed(lambda: p.ioctl(iommufd, u.IOMMU_IOAS_UNMAP, bytearray(
        u.IOAS_UNMAP.pack(24, ioas, IOVA, size))))


def two_domains(gib: int) -> tuple[Timing, Timing, int]:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    unit = m.add_iommu_unit(aw=48, snoop_control=True)
    m.add_pci_device("0000:00:02.0")  # behind unit 0: no snoop control
    m.add_pci_device("0000:00:03.0", iommu_unit=unit)
    p = m.spawn_process(cap_ipc_lock=True)
    fd = p.open("/dev/iommu")
    ioas = _ioas(p, fd)
    # the coherent domain first: a HWPT keeps the coherency it was made with, so the device
    # with snoop control would share the other's non-coherent HWPT as it is
    hwpts = {_bind(p, fd, 1, ioas), _bind(p, fd, 0, ioas)}
    assert len(hwpts) == 2, "the two units must need two domains"
    size = gib << 30
    va = p.mmap(size, "thp")
    t_map = _map(p, fd, ioas, va, size)
    pins = m.mem.pins.pins
    t_unmap = _unmap(p, fd, ioas, size)
    p.exit()
    assert m.mem.pins.pins == 0
    return t_map, t_unmap, pins


def dirty_bitmap(gib: int, split: bool) -> tuple[Timing, Timing, int]:
    m = Machine("arm64-smmuv3", ram=f"{gib + 4}G")
    if split:  # SET_DIRTY_TRACKING splits every block to 4K
        m.dirty_granule = 4096
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    fd = p.open("/dev/iommu")
    ioas = _ioas(p, fd)
    hwpt = _bind(p, fd, 0, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    size = gib << 30
    va = p.mmap(size, "thp")
    _map(p, fd, ioas, va, size)
    p.ioctl(fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
            bytearray(u.HWPT_SET_DIRTY_TRACKING.pack(16, 1, hwpt, 0)))
    for off in range(0, size, 2 << 20):  # the device dirties every 2M block once
        dev.dma_write(IOVA + off, b"\x01")
    nbytes = size // 4096 // 8
    bitmap = p.mmap(nbytes)
    t_read = _timed(lambda: p.ioctl(fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, bytearray(
        u.HWPT_GET_DIRTY_BITMAP.pack(48, hwpt, 0, 0, IOVA, size, 4096, bitmap))))
    dirty = int(np.unpackbits(np.frombuffer(p.read(bitmap, nbytes), dtype=np.uint8)).sum())
    t_unmap = _unmap(p, fd, ioas, size)
    p.exit()
    assert m.mem.pins.pins == 0
    return t_read, t_unmap, dirty


def _median(runs: list[Timing]) -> Timing:
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def figures(gib: int, repeat: int, blocks: bool) -> list[Figure]:
    """The table at ``gib`` GiB, each figure the median of ``repeat`` fresh runs."""
    maps, unmaps, reads, unmaps2, reads4k, unmaps4k = ([] for _ in range(6))
    pins = dirty = dirty4k = 0
    for _ in range(repeat):
        t_map, t_unmap, pins = two_domains(gib)
        maps.append(t_map)
        unmaps.append(t_unmap)
        if blocks:
            t_read, t_unmap2, dirty = dirty_bitmap(gib, split=False)
            reads.append(t_read)
            unmaps2.append(t_unmap2)
        t_read, t_unmap2, dirty4k = dirty_bitmap(gib, split=True)
        reads4k.append(t_read)
        unmaps4k.append(t_unmap2)
    scale = gib / 64  # the targets are set at 64 GiB

    def fig(name: str, runs: list[Timing], target: float) -> Figure:
        wall, cpu = _median(runs)
        return Figure(name, wall, "s", round(target * scale, 3), cpu=cpu)

    out = [
        fig(f"IOAS_MAP {gib} GiB, two VT-d domains ({pins} pins)", maps, 0.4),
        fig(f"IOAS_UNMAP {gib} GiB, two VT-d domains", unmaps, 0.4),
        fig(f"GET_DIRTY_BITMAP {gib} GiB at 4K, split to 4K ({dirty4k} bits)", reads4k, 0.3),
        fig(f"IOAS_UNMAP {gib} GiB, SMMUv3 domain split to 4K", unmaps4k, 2.0),
    ]
    if blocks:
        out += [fig(f"GET_DIRTY_BITMAP {gib} GiB at 4K, SMMUv3 blocks ({dirty} bits)", reads,
                    2.0),
                fig(f"IOAS_UNMAP {gib} GiB, SMMUv3 dirty-tracking blocks", unmaps2, 2.0)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="comma-separated GiB sizes to sweep (targets scale with size)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", action="store_true",
                    help="also read and unmap a dirty-tracking domain left in 2M blocks")
    args = ap.parse_args()
    for gib in args.sizes or [args.gib]:
        print_figures(f"bench_iommufd: {gib} GiB of THP, median of {args.repeat} "
                      "(wall, cpu)", figures(gib, args.repeat, args.blocks))


if __name__ == "__main__":
    main()
