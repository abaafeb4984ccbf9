"""A 1 TiB hugetlb-1G guest through VFIO type1 and through iommufd: each step's wall time
and the process's peak RSS.

The host has 1 TiB of RAM (sparse: the model keeps what is touched). VFIO type1
(x86-vtd): MAP_DMA of the whole guest, dirty tracking START, GET_BITMAP of the whole
range, STOP, UNMAP_DMA, exit. iommufd (arm64-smmuv3, a dirty-tracking HWPT): IOAS_MAP,
SET_DIRTY_TRACKING on (the lab's ``dirty_granule`` splits every block to 4K), the device
writes one byte per GiB, GET_DIRTY_BITMAP of the whole range, SET_DIRTY_TRACKING off
(merged back), IOAS_UNMAP, exit. Targets (issue 22): each step < 30 s, peak RSS <= 16 GiB.

``--sweep`` runs 1, 16, 64, 256 and 1024 GiB (each in a process of its own) and prints
ms per GiB of each step and the peak RSS per 4K page of guest RAM. ``--state`` prints
the model's bytes per 4K page while the iommufd domain is split to 4K: page tables, pin
counts, the mm's page mirror, areas, and their ratios to the bytes of the real page
tables (targets: tables <= 1.1, the whole state <= 1.5).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from iommulab import Machine, Process
from iommulab.iommufd import uapi as u
from iommulab.vfio import uapi as v

IOVA = 1 << 40
PAGE = 4096
STEP_TARGET = 30.0  # seconds
RSS_TARGET = 16 << 30  # bytes


def peak_rss() -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


class Steps:
    """Times each step (wall; user and system CPU, since this VM charges first-touch
    page faults to the process as system time) and notes the peak RSS after it."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.rows: list[tuple[str, float, int, float, float]] = []

    def __call__(self, name: str, run: Callable[[], object]) -> None:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        self.rows.append((f"{self.part}: {name}", wall, peak_rss(), r1.ru_utime - r0.ru_utime,
                          r1.ru_stime - r0.ru_stime))


def _vfio(gib: int, steps: Steps) -> None:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    unit = m.add_iommu_unit(aw=48)  # 4-level tables: a TiB of IOVA from IOVA
    dev = m.add_pci_device("0000:00:02.0", iommu_unit=unit)
    p = m.spawn_process(cap_ipc_lock=True)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, v.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, v.VFIO_SET_IOMMU, v.VFIO_TYPE1v2_IOMMU)
    size = gib << 30
    va = 0

    def mmap() -> None:
        nonlocal va
        va = p.mmap(size, "hugetlb-1G")

    steps("mmap hugetlb-1G", mmap)
    steps("MAP_DMA", lambda: p.ioctl(c, v.VFIO_IOMMU_MAP_DMA, bytearray(
        v.DMA_MAP.pack(32, 3, va, IOVA, size))))
    steps("DIRTY_PAGES START", lambda: p.ioctl(c, v.VFIO_IOMMU_DIRTY_PAGES, bytearray(
        v.DIRTY_BITMAP.pack(8, v.VFIO_IOMMU_DIRTY_PAGES_FLAG_START))))
    nbytes = max(8, size // PAGE // 8)
    bitmap = p.mmap(nbytes)
    steps("DIRTY_PAGES GET_BITMAP", lambda: p.ioctl(c, v.VFIO_IOMMU_DIRTY_PAGES, bytearray(
        v.DIRTY_BITMAP.pack(48, v.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
        + v.DIRTY_BITMAP_GET.pack(IOVA, size, PAGE, nbytes, bitmap))))
    steps("DIRTY_PAGES STOP", lambda: p.ioctl(c, v.VFIO_IOMMU_DIRTY_PAGES, bytearray(
        v.DIRTY_BITMAP.pack(8, v.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP))))
    steps("UNMAP_DMA", lambda: p.ioctl(c, v.VFIO_IOMMU_UNMAP_DMA, bytearray(
        v.DMA_UNMAP.pack(24, 0, IOVA, size))))
    steps("exit", p.exit)
    assert m.mem.pins.pins == 0


def _bind(p: Process, fd: int, ioas: int) -> int:
    cdev = p.open("/dev/vfio/devices/vfio0")
    out = bytearray(v.BIND_IOMMUFD.pack(16, 0, fd, 0))
    p.ioctl(cdev, v.VFIO_DEVICE_BIND_IOMMUFD, out)
    devid = v.BIND_IOMMUFD.unpack(out)[3]
    hw = bytearray(u.HWPT_ALLOC.pack(48, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, devid, ioas, 0,
                                     0, 0, 0, 0, 0, 0))
    p.ioctl(fd, u.IOMMU_HWPT_ALLOC, hw)
    hwpt = int(u.HWPT_ALLOC.unpack(hw)[4])
    p.ioctl(cdev, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            bytearray(v.ATTACH_IOMMUFD_PT.pack(16, 0, hwpt, 0)))
    return hwpt


def _iommufd(gib: int, steps: Steps, state: dict[str, Any] | None) -> None:
    m = Machine("arm64-smmuv3", ram=f"{gib + 4}G")
    dev = m.add_pci_device("0000:00:02.0")
    m.dirty_granule = PAGE  # SET_DIRTY_TRACKING splits every block to 4K
    p = m.spawn_process(cap_ipc_lock=True)
    fd = p.open("/dev/iommu")
    out = bytearray(u.IOAS_ALLOC.pack(12, 0, 0))
    p.ioctl(fd, u.IOMMU_IOAS_ALLOC, out)
    ioas = int(u.IOAS_ALLOC.unpack(out)[2])
    hwpt = _bind(p, fd, ioas)
    size = gib << 30
    va = 0

    def mmap() -> None:
        nonlocal va
        va = p.mmap(size, "hugetlb-1G")

    def dirty(on: int) -> None:
        p.ioctl(fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
                bytearray(u.HWPT_SET_DIRTY_TRACKING.pack(16, on, hwpt, 0)))

    steps("mmap hugetlb-1G", mmap)
    steps("IOAS_MAP", lambda: p.ioctl(fd, u.IOMMU_IOAS_MAP, bytearray(
        u.IOAS_MAP.pack(40, 7, ioas, 0, va, size, IOVA))))
    steps("SET_DIRTY_TRACKING on (split to 4K)", lambda: dirty(1))
    if state is not None:
        state.update(model_state(m, p, gib))
    for off in range(0, size, 1 << 30):  # the device dirties one 4K page per GiB
        dev.dma_write(IOVA + off, b"\x01")
    nbytes = size // PAGE // 8
    bitmap = p.mmap(nbytes)
    steps("GET_DIRTY_BITMAP", lambda: p.ioctl(fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, bytearray(
        u.HWPT_GET_DIRTY_BITMAP.pack(48, hwpt, 0, 0, IOVA, size, PAGE, bitmap))))
    bits = int(np.unpackbits(np.frombuffer(p.read(bitmap, min(nbytes, 1 << 20)),
                                           dtype=np.uint8)).sum())
    assert bits == min(gib, 32), bits  # the first MiB of the bitmap covers 32 GiB
    steps("SET_DIRTY_TRACKING off (merge)", lambda: dirty(0))
    steps("IOAS_UNMAP", lambda: p.ioctl(fd, u.IOMMU_IOAS_UNMAP, bytearray(
        u.IOAS_UNMAP.pack(24, ioas, IOVA, size))))
    steps("exit", p.exit)
    assert m.mem.pins.pins == 0


def _table_bytes(m: Machine) -> tuple[int, int]:
    """(model bytes, real bytes) of every io-pgtable's tables: the arrays and about 150
    bytes of array header and dict entries per table; the real tables are their pages."""
    model = real = 0
    for obj in gc.get_objects():
        tables = getattr(obj, "_tables", None) if type(obj).__name__ == "IoPgtable" else None
        if isinstance(tables, dict):
            for arr in tables.values():
                real += arr.nbytes
                model += arr.nbytes + 150
            model += 2 * 50 * len(getattr(obj, "_leaf_tables", {}))
    return model, real


def model_state(m: Machine, p: Process, gib: int) -> dict[str, Any]:
    """The model's bytes per 4K page of guest RAM, by part."""
    pages = (gib << 30) // PAGE
    model_tables, real_tables = _table_bytes(m)
    pins = m.mem.pins.model_bytes()
    mirror = 0
    for vma in p.mm.vmas:
        mirror += vma.pages.model_bytes()  # its arrays, room included
        mirror += 100 * len(vma.folios)  # a dict entry and an int key per folio
    areas = 0
    for obj in gc.get_objects():
        if type(obj).__name__ in ("IoptArea", "IoptPages"):
            areas += sys.getsizeof(obj) + sys.getsizeof(obj.__dict__)
    whole = model_tables + pins + mirror + areas
    return {"pages": pages, "tables": model_tables, "real_tables": real_tables,
            "pins": pins, "mirror": mirror, "areas": areas, "whole": whole}


def run(gib: int, parts: str, state: bool) -> dict[str, Any]:
    rows: list[tuple[str, float, int, float, float]] = []
    st: dict[str, Any] | None = {} if state else None
    if parts in ("vfio", "both"):
        s = Steps("VFIO type1")
        _vfio(gib, s)
        rows += s.rows
        gc.collect()
    if parts in ("iommufd", "both"):
        s = Steps("iommufd")
        _iommufd(gib, s, st)
        rows += s.rows
    return {"gib": gib, "rows": rows, "state": st, "peak": peak_rss()}


def _child(gib: int, parts: str, state: bool) -> dict[str, Any]:
    """:func:`run` in a fresh process, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--gib", str(gib), "--parts", parts, "--json"]
    if state:
        cmd.append("--state")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _print_steps(res: dict[str, Any]) -> None:
    gib = res["gib"]
    scale = gib / 1024  # the targets are set at 1 TiB
    print(f"bench_1tib: {gib} GiB hugetlb-1G guest (wall s, peak RSS GiB so far, "
          "user/system CPU s)")
    for name, wall, rss, user, system in res["rows"]:
        ok = "met" if wall < STEP_TARGET else "MISSED"
        print(f"  {name:<52} {wall:>8.2f} s  {rss / (1 << 30):>7.2f} GiB  "
              f"(cpu {user:.2f}/{system:.2f})  target < {STEP_TARGET:g} s: {ok}")
    peak = res["peak"]
    print(f"  {'peak RSS':<52} {peak / (1 << 30):>8.2f} GiB   target <= "
          f"{RSS_TARGET >> 30} GiB: {'met' if peak <= RSS_TARGET else 'MISSED'}"
          + (f" (at {gib} GiB, scaled {scale:g})" if gib != 1024 else ""))


def _print_state(st: dict[str, Any]) -> None:
    pages = st["pages"]
    print("model state per 4K page of guest RAM, domain split to 4K (bytes)")
    for key, name in (("real_tables", "real page tables (the kernel's)"),
                      ("tables", "page tables (model)"), ("pins", "pin counts"),
                      ("mirror", "mm page mirror (per page, or per folio)"),
                      ("areas", "areas and pages"), ("whole", "whole state")):
        print(f"  {name:<52} {st[key] / pages:>8.2f}")
    real = st["real_tables"] or 1
    t_ratio, w_ratio = st["tables"] / real, st["whole"] / real
    print(f"  {'tables / real table bytes':<52} {t_ratio:>8.2f}   target <= 1.1: "
          f"{'met' if t_ratio <= 1.1 else 'MISSED'}")
    print(f"  {'whole state / real table bytes':<52} {w_ratio:>8.2f}   target <= 1.5: "
          f"{'met' if w_ratio <= 1.5 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=1024)
    ap.add_argument("--parts", choices=("vfio", "iommufd", "both"), default="both")
    ap.add_argument("--sweep", action="store_true",
                    help="1, 16, 64, 256, 1024 GiB: ms/GiB per step, peak RSS per 4K page")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 16, 64, 256, 1024], help="the sweep's sizes in GiB")
    ap.add_argument("--state", action="store_true",
                    help="the model's bytes per 4K page, domain split to 4K")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:
        print(json.dumps(run(args.gib, args.parts, args.state)))
        return
    if args.sweep:
        results = [_child(g, args.parts, False) for g in args.sizes]
        names = [row[0] for row in results[0]["rows"]]
        print("bench_1tib sweep: ms per GiB of each step; peak RSS bytes per 4K page")
        print(f"  {'step':<52} " + " ".join(f"{g:>8} GiB" for g in args.sizes))
        for i, name in enumerate(names):
            cells = " ".join(f"{r['rows'][i][1] * 1e3 / r['gib']:>12.2f}" for r in results)
            print(f"  {name:<52} {cells}")
        cells = " ".join(f"{r['peak'] / (r['gib'] << 30 >> 12):>12.1f}" for r in results)
        print(f"  {'peak RSS, bytes per 4K page':<52} {cells}")
        cells = " ".join(f"{r['peak'] / (1 << 30):>12.2f}" for r in results)
        print(f"  {'peak RSS, GiB':<52} {cells}")
        return
    res = _child(args.gib, args.parts, args.state)
    _print_steps(res)
    if args.state and res["state"]:
        _print_state(res["state"])


if __name__ == "__main__":
    main()
