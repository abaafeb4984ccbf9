"""What a program did to the model under ``iommulab exec``, as a report like ``run``'s.

:class:`ExecLog` is told of each model ioctl (its name and outcome) and samples the
machine after it: the peak of pins and locked memory, the IOPTEs of the domains the
groups are attached to when they map the most, and every paging domain met (whose
invalidation counters are read at the end, so the flushes of a domain's last call,
its destroy, count too). :meth:`ExecLog.result` turns that into a
:class:`~iommulab.scenarios.ScenarioResult` for the text, JSON and HTML renderers.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..iommu.domain import DomainType, IommuDomain
from ..iommufd import uapi as iu
from ..report import format_size
from ..scenarios.base import ScenarioResult, Table
from ..vfio import uapi as vu

if TYPE_CHECKING:
    from ..syscall.host import Host

__all__ = ["ExecLog", "request_name"]

_NAMES: dict[int, str] = {c.request: c.name for c in iu.COMMANDS.values()}
_NAMES[iu.IOMMU_TEST_CMD] = "IOMMU_TEST_CMD"
#: a device fd's requests whose numbers the container's requests also use
_DEVICE_NAMES = {vu.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
                 vu.VFIO_DEVICE_PCI_HOT_RESET: "VFIO_DEVICE_PCI_HOT_RESET"}
for _k, _v in vars(vu).items():
    if (_k.startswith("VFIO_") and isinstance(_v, int) and _v >> 8 == vu.VFIO_TYPE
            and _v & 0xFF >= vu.VFIO_BASE and _k not in _DEVICE_NAMES.values()):
        _NAMES.setdefault(_v, _k)
#: the calls after which the attached domains may map more (their IOPTEs are sampled)
_MAPPING = frozenset({"IOMMU_IOAS_MAP", "IOMMU_IOAS_MAP_FILE", "IOMMU_IOAS_COPY",
                      "IOMMU_HWPT_ALLOC", "IOMMU_TEST_CMD", "VFIO_IOMMU_MAP_DMA",
                      "VFIO_SET_IOMMU", "VFIO_GROUP_SET_CONTAINER",
                      "VFIO_DEVICE_ATTACH_IOMMUFD_PT"})
_PAGING = int(DomainType.UNMANAGED)
#: vfio-pci's region indexes (VFIO_PCI_*_REGION_INDEX)
_REGIONS = {**{i: f"BAR{i}" for i in range(6)}, 6: "ROM", 7: "config", 8: "VGA"}


def request_name(request: int, *, device: bool = False) -> str:
    """The uAPI name of an ioctl request (hex for one the model does not know);
    ``device``: made on a VFIO device fd, where two numbers mean other requests."""
    if device and request in _DEVICE_NAMES:
        return _DEVICE_NAMES[request]
    return _NAMES.get(request, f"{request:#x}")


class ExecLog:
    """Counts and peaks of one run (see the module docstring)."""

    def __init__(self, machine: Host) -> None:
        self.machine = machine
        self.calls: Counter[tuple[str, int]] = Counter()  # (name, errno or 0)
        self.pids: set[int] = set()
        self.peak_pins = self.peak_pinned_frames = self.peak_iommu_pages = 0
        self.peak_locked_vm = 0  # pages, summed over users
        self.peak_mapped = 0
        self.peak_iopte: dict[int, int] = {}
        self.domains: dict[int, IommuDomain] = {}
        #: device region accesses: (region, "read"/"write") -> [calls, bytes, failed]
        self.regions: dict[tuple[str, str], list[int]] = {}
        self.eventfd_signals = 0  # interrupts the model signalled into the program

    def record_rw(self, pid: int, pos: int, write: bool, done: int, err: int) -> None:
        """After a read or write of a VFIO device fd at ``pos`` (``done`` bytes moved,
        ``err``: 0 or its errno)."""
        index = pos >> vu.VFIO_PCI_OFFSET_SHIFT
        region = _REGIONS.get(index, f"region {index}")
        row = self.regions.setdefault((region, "write" if write else "read"), [0, 0, 0])
        row[0] += 1
        row[1] += done
        row[2] += bool(err)
        self.pids.add(pid)

    def record(self, pid: int, request: int, err: int, *, device: bool = False) -> None:
        """After the model answered ``request`` of ``pid`` (``err``: 0 or its errno;
        ``device``: on a VFIO device fd)."""
        name = request_name(request, device=device)
        self.calls[(name, err)] += 1
        self.pids.add(pid)
        mem = self.machine.mem
        self.peak_pins = max(self.peak_pins, mem.pins.pins)
        self.peak_pinned_frames = max(self.peak_pinned_frames, mem.pins.pinned_frames)
        self.peak_iommu_pages = max(self.peak_iommu_pages, mem.iommu_pages)
        locked = sum(u.locked_vm for u in self.machine.users.values())
        self.peak_locked_vm = max(self.peak_locked_vm, locked)
        if err == 0 and name in _MAPPING:
            self._sample_domains()

    def _attached(self) -> list[IommuDomain]:
        core = self.machine.core
        if core is None:
            return []
        seen: dict[int, IommuDomain] = {}
        for group in core.groups.values():
            d = group.domain
            if d is not None and int(d.type) == _PAGING:
                seen[id(d)] = d
        return list(seen.values())

    def _sample_domains(self) -> None:
        hist: Counter[int] = Counter()
        for d in self._attached():
            self.domains.setdefault(id(d), d)
            hist.update(d.leaf_histogram())
        mapped = sum(size * n for size, n in hist.items())
        if mapped > self.peak_mapped:
            self.peak_mapped, self.peak_iopte = mapped, dict(hist)

    def result(self, argv: Sequence[str], status: int, *, kernel: str,
               left: list[str]) -> ScenarioResult:
        """The report of the run: ``status`` the program's, ``left`` what the machine
        still held afterwards (:meth:`~iommulab.testing.LeakSnapshot.diff`)."""
        m = self.machine
        ok = sum(n for (_, err), n in self.calls.items() if not err)
        failed = sum(self.calls.values()) - ok
        rows = []
        for name in sorted({n for n, _ in self.calls}):
            outcomes = {err: n for (nm, err), n in self.calls.items() if nm == name}
            errors = ", ".join(f"{errno.errorcode.get(e, e)} x{n}"
                               for e, n in sorted(outcomes.items()) if e)
            rows.append([name, sum(outcomes.values()), outcomes.get(0, 0), errors or "-"])
        tables = [Table("model ioctls", ["request", "calls", "ok", "errors"], rows, "lrrl")]
        if self.peak_iopte:
            tables.append(Table(
                "IOPTEs of the attached domains at their largest",
                ["IOPTE size", "entries", "bytes mapped"],
                [[format_size(s), n, format_size(s * n)]
                 for s, n in sorted(self.peak_iopte.items())], "rrr"))
        flush = Counter[str]()
        for d in self.domains.values():
            st = d.tlb_stats
            flush.update({"iotlb_sync": st.iotlb_sync, "sync_bytes": st.sync_bytes,
                          "flush_all": st.flush_all, "flush_walk": st.flush_walk,
                          "leaves queued": st.add_page, "sync_map": st.sync_map})
        if self.domains:
            tables.append(Table("invalidations of the paging domains met",
                                ["counter", "value"], [[k, v] for k, v in flush.items()],
                                "lr"))
        if self.regions:
            tables.append(Table("device region reads and writes",
                                ["region", "op", "calls", "bytes", "failed"],
                                [[r, op, *v] for (r, op), v in sorted(self.regions.items())],
                                "llrrr"))
        faults = len(m.faults)
        headline: dict[str, int | float | str] = {
            "exit status": status, "model ioctls": ok + failed, "failed ioctls": failed,
            "processes": len(self.pids), "peak pins": self.peak_pins,
            "peak pinned frames": self.peak_pinned_frames,
            "peak locked_vm": format_size(self.peak_locked_vm << 12),
            "peak IOMMU table pages": self.peak_iommu_pages,
            "peak bytes mapped": format_size(self.peak_mapped), "IOMMU faults": faults,
            "interrupts signalled": self.eventfd_signals,
            "machine afterwards": "fresh" if not left else "; ".join(left)}
        return ScenarioResult(
            scenario="exec", title=f"iommulab exec {os.path.basename(argv[0])}",
            platform=m.platform, seed=m.seed, quick=False,
            params={"program": list(argv), "kernel": kernel}, headline=headline,
            tables=tables, name=os.path.basename(argv[0]),
            notes=["IOPTEs are sampled after each call that may map more; invalidation "
                   "counters are the domains' own, read after the run."])
