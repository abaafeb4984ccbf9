"""The leak baseline: what a machine holds when nothing uses it, to compare after a test.

After every process has exited and every fd is closed, a machine must hold what a fresh
one holds: no pins, no ``locked_vm``/``pinned_vm``, the same frames and page-table
memory, no iommufd object, no domain beyond the groups' default ones, every group on
its default domain with no DMA owner, no open file. Take :func:`leak_snapshot` of the
machine before the test and again after it, and :meth:`LeakSnapshot.diff` names each
difference::

    fresh = leak_snapshot(m)
    ...                                   # processes open, map, fork, exit
    assert not (diff := fresh.diff(leak_snapshot(m, processes=procs))), diff

Objects are found by walking the object graph from the machine, the processes and any
``files`` the caller kept (:func:`~iommulab.testing.invariants.reachable`), so an
iommufd context that only a leaked reference keeps alive is still seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from ..eventfd import EventFdCtx
from ..iommu.domain import DomainType, IommuDomain
from ..iommufd.objects import IommufdCtx
from ..vfio.files import VfioFile
from .invariants import reachable

if TYPE_CHECKING:
    from ..machine import Machine, Process

__all__ = ["LeakSnapshot", "leak_snapshot"]

_PAGING = int(DomainType.UNMANAGED)  # __IOMMU_DOMAIN_PAGING


@dataclass(frozen=True)
class LeakSnapshot:
    """What a machine holds at one moment that a leak would change (:func:`leak_snapshot`).

    Counts are machine-wide; the mappings hold only non-zero or non-default entries, so
    a fresh machine's are empty except ``domains`` (the groups' default domains) and
    ``groups`` (each on its default domain)."""

    pins: int  # pin references held on frames
    pinned_frames: int
    frames_in_use: int  # frames the buddy allocator has handed out
    iommu_pages: int  # NR_IOMMU_PAGES: frames holding IOMMU page tables
    orphan_pages: int  # pages no process maps that wait for their last unpin
    locked_vm: Mapping[int, int] = field(default_factory=dict)  # uid -> user's locked_vm
    mm_counters: Mapping[str, int] = field(default_factory=dict)  # "process N pinned_vm"
    iommufd_objects: Mapping[str, int] = field(default_factory=dict)  # kind -> count
    domains: Mapping[str, int] = field(default_factory=dict)  # live paging domains by kind
    groups: Mapping[int, str] = field(default_factory=dict)  # group id -> its state
    open_files: Mapping[str, int] = field(default_factory=dict)  # kind -> files with refs
    vfio_devices: Mapping[str, str] = field(default_factory=dict)  # bdf -> open state
    eventfd_refs: int = 0  # references on eventfd contexts (files and drivers)
    irq_handlers: int = 0  # host MSI vectors and handlers, handlers on INTx lines

    def diff(self, now: LeakSnapshot) -> list[str]:
        """One line per field where ``now`` differs from this (fresh) snapshot, naming the
        values; empty when nothing leaked."""
        out: list[str] = []
        for f in fields(self):
            was, got = getattr(self, f.name), getattr(now, f.name)
            if was == got:
                continue
            if isinstance(was, Mapping):
                keys = sorted(set(was) | set(got), key=str)
                parts = [f"{k}: {got.get(k, '-')} (fresh: {was.get(k, '-')})"
                         for k in keys if was.get(k) != got.get(k)]
                out.append(f"{f.name}: " + "; ".join(parts))
            else:
                out.append(f"{f.name}: {got} (fresh machine: {was}, {got - was:+d})")
        return out


def leak_snapshot(machine: Machine, processes: Iterable[Process] = (),
                  files: Iterable[object] = ()) -> LeakSnapshot:
    """The machine's :class:`LeakSnapshot`. ``processes`` (exited or not) add their mm's
    counters; ``files`` are extra roots for the walk (files a test opened and may have
    leaked). O(objects reachable + pinned sections)."""
    procs = list(processes)
    mem = machine.mem
    frames = mem.frames
    objects: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    open_files: Counter[str] = Counter()
    eventfd_refs = 0
    for obj in reachable([machine, *procs, *files]):
        if isinstance(obj, IommufdCtx):
            objects.update(type(o).__name__ for o in obj.objects.values())
            objects.update("reserved id" for _ in obj._reserved)
        elif isinstance(obj, IommuDomain):
            if obj.ops is not None and obj.type & _PAGING:
                domains[f"{type(obj.ops).__name__} {obj.type.name}"] += 1
        elif isinstance(obj, VfioFile) and obj.refs > 0:
            open_files[type(obj).__name__] += 1
        elif isinstance(obj, EventFdCtx):
            eventfd_refs += obj.kref
    return LeakSnapshot(
        pins=mem.pins.pins, pinned_frames=mem.pins.pinned_frames,
        frames_in_use=frames.total_frames - frames.free_frames,
        iommu_pages=mem.iommu_pages,
        orphan_pages=mem.orphans.total,
        locked_vm={uid: u.locked_vm for uid, u in machine.users.items() if u.locked_vm},
        mm_counters=_mm_counters(procs), iommufd_objects=dict(objects),
        domains=dict(domains), groups=_groups(machine), open_files=dict(open_files),
        vfio_devices=_vfio_devices(machine), eventfd_refs=eventfd_refs,
        irq_handlers=len(machine.host_msi.handlers) + len(machine.host_msi.allocated) + sum(
            d.fn.intx_handler is not None for d in machine.devices.values()))


def _mm_counters(procs: list[Process]) -> dict[str, int]:
    """The non-zero ``locked_vm``, ``pinned_vm`` and GUP pin counts of each process's mm."""
    out: dict[str, int] = {}
    for i, p in enumerate(procs):
        for name in ("locked_vm", "pinned_vm", "pinned_pages"):
            value = getattr(p.mm, name)
            if value:
                out[f"process {i} {name}"] = value
    return out


def _groups(machine: Machine) -> dict[int, str]:
    """Each IOMMU group's state: on its default domain or not, its DMA owners (the
    ``owner_cnt`` of ``iommu_group_claim_dma_owner`` where the core keeps it) and
    whether /dev/vfio/N is open."""
    out: dict[int, str] = {}
    core = machine.core
    for gid, group in sorted(core.groups.items() if core is not None else ()):
        dom = group.domain
        state = "default domain" if dom is group.default_domain else \
            f"on a {dom.type.name if dom is not None else 'missing'} domain"
        owners = int(getattr(group, "owner_cnt", 0))
        if owners:
            state += f", owner_cnt {owners}"
        if gid in machine.open_groups:
            state += ", open"
        out[gid] = state
    for gid in sorted(machine.open_groups - set(out)):
        out[gid] = "open, no such group"
    return out


def _vfio_devices(machine: Machine) -> dict[str, str]:
    """The ``struct vfio_device`` of each device that is open or bound."""
    out: dict[str, str] = {}
    for bdf, vdev in sorted(machine.vfio_devices.items()):
        state = []
        if vdev.open_count:
            state.append(f"open_count {vdev.open_count}")
        if vdev.idev is not None:
            state.append("bound to an iommufd")
        if vdev.cdev_opened:
            state.append("cdev bound")
        if state:
            out[bdf] = ", ".join(state)
    return out
