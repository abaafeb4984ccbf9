"""Nested VT-d translation (scalable mode): an IOTLB miss and a hit.

A guest first stage (4 levels, 4K leaves, in guest memory, addressed by guest-physical
addresses) over a nest-parent second stage (4 levels, 4K leaves), set up the way a VMM
does it: ``Machine("x86-vtd", vtd_scalable=True)``, a vfio-pci device bound to iommufd,
the guest's RAM mapped into an IOAS, a nest-parent HWPT on it and a nested HWPT
(``IOMMU_HWPT_DATA_VTD_S1``) the device attaches to. The guest's leaves carry A and D as
Linux's first-stage code presets them, so the walks only read.

The miss figure translates PAGES distinct pages after a global IOTLB invalidation, so
every access walks both stages from memory: each of the 4 first-stage entries is fetched
after a 4-level second-stage walk of its address, and the output address takes one more,
24 descriptor reads (checked with the unit's count). The hit figure translates one
address whose entry stays cached. Medians of ``--repeat`` batches, wall and process CPU
time. Run from the repository root with ``PYTHONPATH=src``.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable

from _common import Figure, median_wall_cpu, print_figures
from iommulab import Machine
from iommulab.api import Iommufd, VfioDevice
from iommulab.drivers.vtd import VtdHw
from iommulab.drivers.vtd_sm import IotlbInv
from iommulab.iommufd import uapi as u
from iommulab.pgtable.vtd_fs import FL_A, FL_D, FirstStageBuilder
from iommulab.sizes import SZ_4K

BDF = "0000:00:04.0"
GUEST = 0x1000_0000  # guest-physical base of the guest RAM
TABLE_PAGES = 16  # guest pages 1..15 hold the first-stage tables
IOVA = 0x10_0000_0000
PAGES = 2000


def _platform() -> tuple[VtdHw, int, Callable[[], None]]:
    """The unit, the device's source id and a close (checks nothing leaked)."""
    m = Machine("x86-vtd", kernel="7.0", vtd_scalable=True)
    m.add_pci_device(BDF)
    p = m.spawn_process(cap_ipc_lock=True)
    fd = Iommufd.open(p)
    vdev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p)
    dev_id = vdev.bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    ram_pages = TABLE_PAGES + PAGES
    ram = p.mmap(ram_pages * SZ_4K)
    fd.ioas_map(ioas, ram, ram_pages * SZ_4K, GUEST)
    parent = fd.hwpt_alloc(dev_id, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    tables = iter(range(GUEST + SZ_4K, GUEST + TABLE_PAGES * SZ_4K, SZ_4K))

    def write_u64(gpa: int, value: int) -> None:
        p.write(ram + gpa - GUEST, struct.pack("<Q", value))

    fs = FirstStageBuilder(lambda: next(tables), write_u64)
    for i in range(PAGES):
        fs.map(IOVA + i * SZ_4K, GUEST + (TABLE_PAGES + i) * SZ_4K, extra=FL_A | FL_D)
    uptr = p.mmap(SZ_4K)
    p.write(uptr, struct.pack("<QQII", 0, fs.root, 48, 0))  # struct iommu_hwpt_vtd_s1
    cmd = bytearray(u.HWPT_ALLOC.pack(48, 0, dev_id, parent, 0, 0, 1, 24, uptr, 0, 0))
    p.ioctl(fd.fd, u.IOMMU_HWPT_ALLOC, cmd)
    hwpt = int(u.HWPT_ALLOC.unpack(cmd)[4])
    assert vdev.attach_pt(hwpt) == hwpt
    unit = m.translator
    assert isinstance(unit, VtdHw) and unit.sm is not None

    def close() -> None:
        p.exit()
        assert m.mem.pins.pins == 0

    return unit, m.devices[BDF].sid, close


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000, help="hits per batch")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    unit, sid, close = _platform()
    sm = unit.sm
    assert sm is not None
    translate = unit.translate_run
    addrs = [IOVA + i * SZ_4K + 0x40 for i in range(PAGES)]
    calls = range(args.calls)

    def flush() -> None:
        sm.submit([IotlbInv(1)])  # global: every cached translation goes

    def walks() -> None:
        for a in addrs:
            translate(sid, a, False)

    def hits() -> None:
        for _ in calls:
            translate(sid, IOVA + 0x123, False)

    translate(sid, addrs[0], False)  # the context and PASID entries cached
    flush()
    reads, missed = sm.counts["descriptor_read"], sm.counts["iotlb_miss"]
    walks()  # also the check that every page translates
    per_walk = (sm.counts["descriptor_read"] - reads) / PAGES
    assert sm.counts["iotlb_miss"] - missed == PAGES, "a walk hit the IOTLB"
    assert per_walk == 24, f"{per_walk} descriptor reads per miss, not 24"
    assert translate(sid, IOVA + 5 * SZ_4K + 8, False)[0] == \
        translate(sid, IOVA + 5 * SZ_4K + 8, False)[0]

    def figure(name: str, run: Callable[[], None], setup: Callable[[], None] | None,
               n: int, target: float) -> Figure:
        wall, cpu = median_wall_cpu(run, setup, args.repeat)
        return Figure(name, wall * 1e6 / n, "us/access", target, cpu=cpu * 1e6 / n)

    hit = figure("nested VT-d translate, IOTLB hit", hits, None, args.calls, 1)
    miss = figure("nested VT-d translate, IOTLB miss (24 reads)", walks, flush, PAGES, 30)
    assert hit.cpu is not None and miss.cpu is not None
    print_figures(f"bench_nested_vtd: median of {args.repeat} batches "
                  f"({args.calls} hits, {PAGES} misses)", [
                      hit, miss, Figure("miss / hit, CPU time", miss.cpu / hit.cpu, "x")])
    close()


if __name__ == "__main__":
    main()
