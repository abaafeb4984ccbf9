"""Replaying a parsed trace through the model's page tables (lab).

Each stream of mappings gets its own paging domain of the chosen platform
(``x86-vtd``: the intel-iommu driver's DMA domain on a DMAR unit of the chosen
address width, 4K/2M/1G; ``arm64-smmuv3``: LPAE stage 1, 48-bit, 4K/2M/1G), as
the chosen kernel release has it (``kernel``: VT-d answers differently in 6.12
and 7.0, see :mod:`iommulab.drivers.vtd`). Every ``map`` event is an
``iommu_map`` of the same IOVA, physical address and size, every ``unmap`` an
``iommu_unmap``; the model's answers are compared with what the trace recorded,
and WARNs the kernel would have printed are listed.

Attribution. ``iommu`` map/unmap events name no device, so a stream is found,
in this order, by (1) the ``dev=`` field of the unmerged variant; (2) pairing
with a ``dma`` event of the same task and CPU, at most :data:`PAIR_WINDOW`
seconds and :data:`PAIR_EVENTS` events away, whose address lies in the range
(``iommu_dma_map_phys`` maps before ``trace_dma_map_phys``; ``dma_free`` is
traced before its unmap); (3) for an unmap, the one stream that has the range
mapped; (4) a task that pairing tied to exactly one device. What is left is
replayed in a stream of its task and reported as not attributed to a device
(a VMM mapping guest RAM through VFIO looks like this).

Disagreements reported: a map the model refuses (its errno), an
``unmapped_size`` other than the model's, a fault the trace shows where the
model has a live translation, or one the model would not raise because the
IOVA sits in the lazy flush queue (``--lazy``), and a sync through the DMA API
on an IOVA the trace unmapped before and did not map again, where the model
predicts a fault the trace does not show.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..drivers.vtd import IntelIommu, VtdHw
from ..errors import KernelError
from ..inspect import save_domain
from ..iommu import DomainType, IommuDomain, alloc_paging_domain
from ..iommu.gather import IommuIotlbGather
from ..iommu.pgsize import iommu_pgsize
from ..kernel import DEFAULT_KERNEL, KernelVersion
from ..mem import PhysMem
from ..pgtable import IoPgtableCfg, IoPgtableFmt
from ..prot import Prot
from ..report import format_size
from ..scenarios.base import Plot, Progress, ScenarioResult, Table, UsageError
from ..sizes import SZ_1G, SZ_2M, SZ_4K
from .parse import ParsedTrace, TraceEvent
from .timeline import TimelineRecorder

__all__ = ["PAIR_EVENTS", "PAIR_WINDOW", "REPLAY_PLATFORMS", "replay"]

REPLAY_PLATFORMS = ("x86-vtd", "arm64-smmuv3")
PAIR_WINDOW = 0.001  # seconds between an iommu event and the dma event it pairs with
PAIR_EVENTS = 4  # events of the same task and CPU looked at on each side
FQ_SIZE, FQ_TIMEOUT = 256, 0.010  # IOVA_DEFAULT_FQ_SIZE, IOVA_DEFAULT_FQ_TIMEOUT (10 ms)
_RW = int(Prot.READ | Prot.WRITE)
_MAP_DMA = {"dma_map_page", "dma_map_resource", "dma_map_phys", "dma_alloc", "dma_alloc_pages",
            "dma_alloc_sgt", "dma_map_sg"}
_UNMAP_DMA = {"dma_unmap_page", "dma_unmap_resource", "dma_unmap_phys", "dma_free",
              "dma_free_pages", "dma_free_sgt"}
# calls that need the device's mapping live (dma_unmap_* is traced after the unmap)
_ACCESS_DMA = {"dma_sync_single_for_cpu", "dma_sync_single_for_device", "dma_sync_sg_for_cpu",
               "dma_sync_sg_for_device"}


def _dma_addrs(ev: TraceEvent) -> list[int]:
    f = ev.fields
    if "dma_addrs" in f and ev.name != "dma_map_sg_err":
        return list(f["dma_addrs"])
    return [f["dma_addr"]] if "dma_addr" in f else []


#: IOVA widths a replayed domain may have: any MGAW a VT-d unit reports; LPAE's IAS values.
VTD_WIDTHS = range(32, 58)
LPAE_WIDTHS = (32, 36, 40, 42, 44, 48)


class _Domains:
    """Where the replayed domains come from: one DMAR unit of the chosen width (a DMA
    domain per stream, attached to a device of its own), or LPAE stage-1 tables."""

    def __init__(self, platform: str, address_width: int, kernel: KernelVersion) -> None:
        self.platform, self.address_width, self.kernel = platform, address_width, kernel
        self.vtd: IntelIommu | None = None
        if platform == "x86-vtd":
            self.vtd = IntelIommu(VtdHw(PhysMem("64G"), aw=address_width), kernel=kernel)
        self.masters: list[Any] = []

    def new(self) -> IommuDomain:
        if self.vtd is None:
            cfg = IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, self.address_width, 48,
                               kernel=self.kernel)
            return alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1, cfg, mem=PhysMem("64G"))
        master = self.vtd.probe_device(len(self.masters) + 1)
        self.masters.append(master)
        domain = self.vtd.domain_alloc_paging(master, DomainType.DMA)
        self.vtd.attach_dev(domain, master)
        return domain

    def release(self) -> None:
        if self.vtd is not None:
            for master in self.masters:
                self.vtd.release_device(master)


@dataclass
class Stream:
    """One replayed domain: a device's, or a task's when no device could be named."""

    key: str
    device: str | None
    domain: IommuDomain
    maps: int = 0
    mapped_bytes: int = 0
    unmaps: int = 0
    unmapped_bytes: int = 0
    refused: int = 0
    faults: int = 0
    faults_agreed: int = 0  # the model has no translation there either
    iopte: Counter[int] = field(default_factory=Counter)  # IOPTE size -> entries written
    table_bytes_peak: int = 0
    how: Counter[str] = field(default_factory=Counter)  # attribution method -> events
    stale: Ranges = field(default_factory=lambda: Ranges())  # lazy: unmapped, not flushed
    stale_entries: int = 0  # unmaps queued since the last flush
    stale_since: float = -1.0
    unmapped: Ranges = field(default_factory=lambda: Ranges())  # unmapped, not mapped again


class Ranges:
    """Disjoint ``[start, end)`` IOVA ranges in sorted lists (bisect: O(log n) lookups)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __contains__(self, iova: int) -> bool:
        i = bisect.bisect_right(self.starts, iova) - 1
        return i >= 0 and iova < self.ends[i]

    def remove(self, lo: int, hi: int) -> None:
        """Take ``[lo, hi)`` out, trimming the ranges it cuts."""
        i = max(bisect.bisect_right(self.starts, lo) - 1, 0)
        j = bisect.bisect_left(self.starts, hi)
        keep_s: list[int] = []
        keep_e: list[int] = []
        for a, b in zip(self.starts[i:j], self.ends[i:j], strict=True):
            if a < lo:
                keep_s.append(a)
                keep_e.append(min(b, lo))
            if b > hi:
                keep_s.append(max(a, hi))
                keep_e.append(b)
        self.starts[i:j], self.ends[i:j] = keep_s, keep_e

    def add(self, lo: int, hi: int) -> None:
        self.remove(lo, hi)
        i = bisect.bisect_left(self.starts, lo)
        self.starts.insert(i, lo)
        self.ends.insert(i, hi)

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()


class _Replay:
    def __init__(self, trace: ParsedTrace, platform: str, strict: bool,
                 address_width: int, kernel: KernelVersion) -> None:
        self.trace = trace
        self.platform = platform
        self.domains = _Domains(platform, address_width, kernel)
        self.strict = strict
        self.streams: dict[str, Stream] = {}
        self.disagreements: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.groups: dict[str, int] = {}
        self.attach: Counter[str] = Counter()
        self.unattributed_faults: list[int] = []
        self.pairs = self._pair()
        self.task_devices: dict[str, set[str]] = defaultdict(set)
        for i, dev in self.pairs.items():
            self.task_devices[trace.events[i].task].add(dev)
        self.faults_seen: set[tuple[str, int]] = set()
        self.timeline = TimelineRecorder()

    # -- attribution -----------------------------------------------------------------------------
    def _pair(self) -> dict[int, str]:
        """Event index of each iommu map/unmap -> the device of the dma event it pairs with."""
        events = self.trace.events
        by_task: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            by_task[(ev.task, ev.cpu)].append(i)
        out: dict[int, str] = {}
        for idxs in by_task.values():
            for pos, i in enumerate(idxs):
                ev = events[i]
                if ev.name not in ("map", "unmap") or "device" in ev.fields:
                    continue
                want = _MAP_DMA if ev.name == "map" else _UNMAP_DMA
                lo, hi = ev.fields["iova"], ev.fields["iova"] + ev.fields["size"]
                near = idxs[max(0, pos - PAIR_EVENTS):pos] + idxs[pos + 1:pos + 1 + PAIR_EVENTS]
                for j in sorted(near, key=lambda j: abs(j - i)):
                    other = events[j]
                    if other.name not in want or abs(other.ts - ev.ts) > PAIR_WINDOW:
                        continue
                    if any(lo <= a < hi for a in _dma_addrs(other)):
                        out[i] = other.fields["device"]
                        break
        return out

    def _stream(self, key: str, device: str | None) -> Stream:
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = Stream(key, device, self.domains.new())
        return s

    def _attribute(self, i: int, ev: TraceEvent) -> tuple[Stream, str]:
        if "device" in ev.fields:
            return self._stream(ev.fields["device"], ev.fields["device"]), "dev= field"
        if i in self.pairs:
            dev = self.pairs[i]
            return self._stream(dev, dev), "paired with a dma event"
        if ev.name == "unmap":
            iova = ev.fields["iova"]
            holders = [s for s in self.streams.values() if s.domain.iova_to_phys(iova)]
            if len(holders) == 1:
                return holders[0], "unmap of a range one stream had mapped"
        devs = self.task_devices.get(ev.task, set())
        if len(devs) == 1 and ev.pid >= 0:
            dev = next(iter(devs))
            return self._stream(dev, dev), "task paired with one device"
        return self._stream(f"task {ev.task}", None), "not attributed to a device"

    # -- replay ----------------------------------------------------------------------------------
    def _disagree(self, ev: TraceEvent, kind: str, stream: str, text: str) -> None:
        self.disagreements.append({"line": ev.line, "ts": ev.ts, "kind": kind,
                                   "stream": stream, "text": text})

    def _flush_stale(self, s: Stream, now: float) -> None:
        if s.stale and (s.stale_entries >= FQ_SIZE or now - s.stale_since >= FQ_TIMEOUT):
            s.domain.flush_iotlb_all()
            s.stale.clear()
            s.stale_entries = 0

    def _map(self, ev: TraceEvent, s: Stream) -> None:
        iova, paddr, size = ev.fields["iova"], ev.fields["paddr"], ev.fields["size"]
        s.maps += 1
        try:
            s.domain.map(iova, paddr, size, _RW)
        except KernelError as e:
            s.refused += 1
            self._disagree(ev, "map refused", s.key, f"map of {format_size(size)} at {iova:#x}: "
                           f"{e}")
            return
        s.mapped_bytes += size
        s.stale.remove(iova, iova + size)
        s.unmapped.remove(iova, iova + size)
        bitmap = s.domain.pgsize_bitmap
        a, p, left = iova, paddr, size
        while left:
            pgsize, count = iommu_pgsize(bitmap, a, p, left)
            s.iopte[pgsize] += count
            a, p, left = a + pgsize * count, p + pgsize * count, left - pgsize * count
        assert s.domain.pgtbl is not None
        s.table_bytes_peak = max(s.table_bytes_peak, s.domain.pgtbl.stats.table_bytes)

    def _unmap(self, ev: TraceEvent, s: Stream) -> None:
        iova, size, recorded = ev.fields["iova"], ev.fields["size"], ev.fields["unmapped_size"]
        s.unmaps += 1
        if self.strict:
            got = s.domain.unmap(iova, size)
        else:
            got = s.domain.unmap_fast(iova, size, IommuIotlbGather())
            if got:
                if not s.stale:
                    s.stale_since = ev.ts
                s.stale.add(iova, iova + got)
                s.stale_entries += 1
                self._flush_stale(s, ev.ts)
        s.unmapped_bytes += got
        if got:
            s.unmapped.add(iova, iova + got)
        if got != recorded:
            self._disagree(ev, "unmapped_size differs", s.key,
                           f"unmap of {format_size(size)} at {iova:#x}: the trace says "
                           f"unmapped_size={recorded}, the model unmapped {got}")

    def _fault(self, i: int, ev: TraceEvent) -> None:
        dev, iova = ev.fields["device"], ev.fields["iova"]
        self.faults_seen.add((dev, iova & ~(SZ_4K - 1)))
        s = self.streams.get(dev)
        if s is None:
            self.unattributed_faults.append(ev.line)
            self.timeline.add("fault", dev, dev, t=ev.ts, order=i, iova=iova, line=ev.line,
                              agreed=False)
            return
        agreed_before = s.faults_agreed
        self._check_fault(ev, s, dev, iova)
        self.timeline.add("fault", s.key, s.device, t=ev.ts, order=i, iova=iova, line=ev.line,
                          agreed=s.faults_agreed > agreed_before)

    def _check_fault(self, ev: TraceEvent, s: Stream, dev: str, iova: int) -> None:
        s.faults += 1
        self._flush_stale(s, ev.ts)
        pa = s.domain.iova_to_phys(iova)
        if pa:
            self._disagree(ev, "fault where the model translates", s.key,
                           f"{dev} faulted at {iova:#x}; the model maps it to {pa:#x}")
        elif iova in s.stale:
            self._disagree(ev, "fault the model misses", s.key,
                           f"{dev} faulted at {iova:#x}; under lazy invalidation the "
                           "unmapped IOVA is still in the flush queue, so a cached "
                           "translation could have served the access")
        else:
            s.faults_agreed += 1

    def _access(self, ev: TraceEvent) -> None:
        """A DMA API call that needs the device's mapping live (a sync)."""
        dev = ev.fields["device"]
        s = self.streams.get(dev)
        if s is None:
            return
        for addr in _dma_addrs(ev):
            if not s.domain.iova_to_phys(addr) and addr in s.unmapped and \
                    (dev, addr & ~(SZ_4K - 1)) not in self.faults_seen:
                self._disagree(ev, "fault the model predicts", s.key,
                               f"{ev.name} on {dev} at {addr:#x}, which the trace unmapped "
                               "before: a device access there faults in the model")

    def run(self, progress: Progress) -> None:
        events = self.trace.events
        step = max(1, len(events) // 100)
        for i, ev in enumerate(events):
            if i % step == 0:
                progress(i, len(events), "replaying")
            name = ev.name
            if name in ("map", "unmap"):
                s, how = self._attribute(i, ev)
                s.how[how] += 1
                if name == "map":
                    self._map(ev, s)
                else:
                    self._unmap(ev, s)
                self.timeline.add(name, s.key, s.device, t=ev.ts, order=i,
                                  iova=ev.fields["iova"], line=ev.line)
            elif name == "io_page_fault":
                self._fault(i, ev)
            elif name in ("add_device_to_group", "remove_device_from_group"):
                self.groups[ev.fields["device"]] = ev.fields["group"]
            elif name in ("attach_device_to_domain", "detach_device_from_domain"):
                self.attach[f"{name.split('_')[0]} {ev.fields['device']}"] += 1
            elif name in _ACCESS_DMA:
                self._access(ev)
        progress(len(events), len(events))


def replay(trace: ParsedTrace, *, platform: str = "x86-vtd", strict_invalidation: bool = True,
           address_width: int = 48, save_states: bool = False,
           progress: Progress | None = None,
           kernel: KernelVersion | str = DEFAULT_KERNEL) -> ScenarioResult:
    """Replay ``trace`` on ``platform`` with domains of ``address_width`` bits (VT-d:
    32-57, a unit's MGAW; LPAE: an IAS) as Linux ``kernel`` ("6.12" or "7.0") answers;
    the result's ``details`` hold the disagreements and the unparsed lines, its tables
    the per-stream figures."""
    if platform not in REPLAY_PLATFORMS:
        raise UsageError(f"replay runs on {', '.join(REPLAY_PLATFORMS)}, not {platform}")
    if platform == "x86-vtd" and address_width not in VTD_WIDTHS:
        raise UsageError(f"--address-width {address_width}: x86-vtd domains take "
                         f"{VTD_WIDTHS.start} to {VTD_WIDTHS.stop - 1} bits")
    if platform != "x86-vtd" and address_width not in LPAE_WIDTHS:
        raise UsageError(f"--address-width {address_width}: {platform} domains take "
                         f"{', '.join(map(str, LPAE_WIDTHS))}")
    try:
        version = KernelVersion.parse(kernel)
    except ValueError as e:
        raise UsageError(f"--kernel: {e}") from None
    r = _Replay(trace, platform, strict_invalidation, address_width, version)
    r.run(progress or Progress())
    res = ScenarioResult("replay", f"replay of {trace.source} on {platform}, Linux {version} "
                         f"({'strict' if strict_invalidation else 'lazy'} invalidation)",
                         platform, 0, False, {"strict": strict_invalidation,
                                              "address_width": address_width,
                                              "kernel": str(version)},
                         name=trace.source)
    events = Counter(ev.name for ev in trace.events)
    devices = sorted({ev.fields["device"] for ev in trace.events if "device" in ev.fields})
    res.headline.update({
        "lines": trace.lines, "events": len(trace.events), "unparsed_lines": len(trace.unparsed),
        "joined_lines": trace.joined_lines, "other_events": sum(trace.other_events.values()),
        "devices": len(devices), "streams": len(r.streams),
        "disagreements": len(r.disagreements),
        "unattributed_map_unmap": sum(s.how["not attributed to a device"]
                                      for s in r.streams.values()),
        "unattributed_faults": len(r.unattributed_faults),
    })
    rows: list[list[object]] = []
    for s in r.streams.values():
        assert s.domain.pgtbl is not None
        st = s.domain.tlb_stats
        rows.append([s.key, s.maps, format_size(s.mapped_bytes), s.unmaps,
                     format_size(s.unmapped_bytes), s.refused,
                     f"{s.faults} ({s.faults_agreed} agreed)" if s.faults else 0,
                     ", ".join(f"{n} x {format_size(z)}" for z, n in sorted(s.iopte.items()))
                     or "-", format_size(s.table_bytes_peak), st.iotlb_sync, st.flush_all,
                     st.add_page, "; ".join(f"{k} {v}" for k, v in s.how.items()) or "-"])
        key = s.key.replace(" ", "_")
        for z, n in s.iopte.items():
            res.headline[f"{key}.iopte_{format_size(z)}"] = n
        res.headline[f"{key}.table_bytes_peak"] = s.table_bytes_peak
        res.headline[f"{key}.iotlb_syncs"] = st.iotlb_sync
        res.headline[f"{key}.faults_agreed"] = s.faults_agreed
        if save_states:
            res.states[key] = save_domain(s.domain, name=s.key)
        warned = s.domain.warnings + s.domain.pgtbl.stats.warnings
        if warned:
            res.notes.append(f"{s.key}: Linux {version} would have warned: " + "; ".join(
                f"{k} ({v}x)" for k, v in sorted(warned.items())))
        s.domain.free()
    r.domains.release()
    res.tables.append(Table("events", ["event", "count"],
                            [[k, v] for k, v in sorted(events.items())]))
    if trace.formats:
        res.tables.append(Table("formats recognised", ["format", "records"],
                                [[k, v] for k, v in sorted(trace.formats.items())]))
    res.tables.append(Table("replayed streams", [
        "stream", "maps", "mapped", "unmaps", "unmapped", "refused", "faults",
        "IOPTEs the model wrote", "table memory (peak)", "IOTLB syncs", "flush-all",
        "leaves invalidated", "attribution"], rows, "lrrrrrrlrrrrl"))
    if r.groups or r.attach:
        res.tables.append(Table("devices", ["device", "group", "attach/detach"], [
            [d, r.groups.get(d, "-"), ", ".join(f"{k.split()[0]} {v}" for k, v in
                                                r.attach.items() if k.endswith(" " + d))
             or "-"] for d in sorted(set(r.groups) | {k.split()[1] for k in r.attach})]))
    if r.disagreements:
        res.tables.append(Table("where the model disagrees with the trace", [
            "line", "time", "kind", "stream", "what"],
            [[d["line"], f"{d['ts']:.6f}", d["kind"], d["stream"], d["text"]]
             for d in r.disagreements], "rrlll"))
    if trace.unparsed:
        res.tables.append(Table(f"lines not parsed ({len(trace.unparsed)})", [
            "line", "why", "text"], [[u.line, u.reason, u.text[:70]] for u in trace.unparsed],
            "rll"))
    if trace.other_events:
        res.notes.append("other events, not replayed: " + ", ".join(
            f"{k} {v}" for k, v in sorted(trace.other_events.items())))
    if r.unattributed_faults:
        res.notes.append(f"{len(r.unattributed_faults)} fault(s) on devices with no attributed "
                         f"mapping (lines {', '.join(map(str, r.unattributed_faults[:10]))}): "
                         "the model cannot say whether they should fault.")
    if any(s.device is None for s in r.streams.values()):
        res.notes.append("Streams named 'task ...' hold iommu map/unmap events that no dma "
                         "event, dev= field or earlier mapping tied to a device; they are "
                         "replayed per task.")
    if "detach_device_from_domain" in events:
        res.notes.append("detach_device_from_domain appears: the trace is from a kernel "
                         "before ~v6.3.")
    if any(s.iopte for s in r.streams.values()):
        sizes = sorted({z for s in r.streams.values() for z in s.iopte})
        res.plots.append(Plot("IOPTEs the model wrote, by stream", "entries",
                              [s.key for s in r.streams.values()],
                              {f"{format_size(z)}": [float(s.iopte.get(z, 0))
                                                     for s in r.streams.values()]
                               for z in sizes}))
    res.timeline = r.timeline.document()
    res.details = {"disagreements": r.disagreements,
                   "unparsed": [{"line": u.line, "reason": u.reason, "text": u.text}
                                for u in trace.unparsed]}
    return res
