"""What a failed call must leave as it found: a snapshot of everything a call can change.

:func:`snapshot` reads the machine and the given processes into plain values that
compare with ``==``: memory (frames other than page tables, pins by frame, anonymous
mappings), accounting (``locked_vm``, ``pinned_vm``, users), every process's VMAs and
fds, every iommufd context reachable from them (objects and ids, IOAS areas, reserved
and allowed ranges, alignment, domains, accesses, ``iopt_pages``), VFIO (containers and
their type1 mappings, domains and IOVA list, groups, devices), the IOMMU core's groups
and every live domain's translations with their dirty bits, and the driver's tags. Lab
counters are left out: a failed call may count what it tried.

Page-table memory is checked apart (:func:`check_tables`): a failed map may leave the
empty tables it installed on the way down, as io-pgtable does, but every table page must
belong to a live domain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iommulab import Machine, Process
from iommulab.dma.cookie import MsiCookie
from iommulab.drivers.mock import MockDomainOps
from iommulab.eventfd import EventFdCtx, EventFdFile
from iommulab.iommu.domain import IommuDomain
from iommulab.iommufd.file import IommufdFile, MemFdFile
from iommulab.iommufd.objects import Access, Device, HwptPaging, Ioas, IommufdCtx
from iommulab.iommufd.selftest import AccessFile
from iommulab.vfio.device import VfioDeviceFile
from iommulab.vfio.files import Container, GroupFile, VfioFile
from iommulab.vfio.pci_core import VfioPciCore

__all__ = ["check_tables", "live_domains", "snapshot"]

State = dict[str, Any]


def snapshot(m: Machine, procs: list[Process]) -> State:
    """Everything a call may change, as comparable values (see the module docstring)."""
    files = _files(procs)
    ctxs = _ctxs(files)
    s: State = {
        "frames": m.mem.frames.total_frames - m.mem.frames.free_frames - m.mem.iommu_pages,
        "pins": _pins(m),
        "anon": int(m.mem.anon.maps.total),
        "users": {uid: u.locked_vm for uid, u in m.users.items() if u.locked_vm},
        "procs": [_proc(p) for p in procs],
        "files": {id(f): _file(f) for f in files},
        "ctxs": [_ctx(c) for c in ctxs],
        "containers": [_container(f) for f in files if isinstance(f, Container)],
        "open_groups": sorted(m.open_groups),
        "vfio_devices": {bdf: (vd.open_count, id(vd.idev), vd.iommufd_attached,
                               sorted(vd.pasids), vd.cdev_opened, _pci(vd.pci))
                         for bdf, vd in m.vfio_devices.items()
                         if vd.open_count or vd.idev is not None},  # else: no state yet
        "host_msi": (sorted(m.host_msi.allocated), sorted(m.host_msi.handlers)),
        "devices": sorted(m.devices),
        "driver": _driver(m),
    }
    if m.core is not None:
        s["groups"] = {gid: (id(g.domain), id(g.default_domain), [d.name for d in g.devices])
                       for gid, g in m.core.groups.items()}
        kept = _kept_msi_cookies(ctxs)
        s["domains"] = {id(d): _domain(d, id(d) in kept) for d in live_domains(m, procs)}
    return s


def diff(before: State, after: State) -> list[str]:
    """The top-level keys whose values differ, with both values (for a failure message)."""
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


# -- memory -----------------------------------------------------------------------------------
def _pins(m: Machine) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    pins = m.mem.pins
    nz = pins.nonzero()
    return int(pins.total), tuple(nz.tolist()), tuple(pins.get(nz).tolist())


def _proc(p: Process) -> tuple[Any, ...]:
    mm = p.mm
    vmas = [(v.start, v.end, v.backing, v.writable, v.pfnmap, _digest(v.pfns()),
             id(v.file), _digest(v.excl()),
             tuple(sorted(v.folios.items()))) for v in mm.vmas]
    return (mm.locked_vm, mm.pinned_vm, mm.pinned_pages, mm.gone, vmas,
            {fd: id(f) for fd, f in p.files.items()}, p.max_fds)


def _digest(a: np.ndarray) -> bytes:
    return bytes(a.tobytes())


# -- files ------------------------------------------------------------------------------------
def _files(procs: list[Process]) -> list[VfioFile]:
    """Every open file the processes reach: their fds, and what those files hold open
    (a group's container or iommufd, a device's iommufd, an access's context)."""
    seen: dict[int, VfioFile] = {}
    todo: list[VfioFile] = [f for p in procs for f in p.files.values()]
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen[id(f)] = f
        todo += [g for g in _held(f) if g is not None]
    return list(seen.values())


def _held(f: VfioFile) -> list[VfioFile | None]:
    if isinstance(f, GroupFile):
        return [f.container, f.iommufd]
    if isinstance(f, VfioDeviceFile):
        return [f.group, f.iommufd]
    if isinstance(f, Container):
        return list(f.groups)
    if isinstance(f, AccessFile) and f.ctx.file is not None:
        return [f.ctx.file]
    return []


def _file(f: VfioFile) -> tuple[Any, ...]:
    base: tuple[Any, ...] = (type(f).__name__, f.refs)
    if isinstance(f, GroupFile):
        return (*base, id(f.container), id(f.iommufd), f.devices_open)
    # a BIND_IOMMUFD whose open fails after vfio_df_iommufd_bind leaves df->devid written
    # (vfio_df_ioctl_bind_iommufd does not clear it); nothing reads it before a bind succeeds
    if isinstance(f, VfioDeviceFile):
        return (*base, id(f.iommufd), f.access_granted, f.devid if f.access_granted else None)
    if isinstance(f, MemFdFile):
        return (*base, f.memfd.refs, f.memfd.size, _digest(f.memfd.cache.get(0, f.memfd.npages)))
    if isinstance(f, AccessFile):
        return (*base, dict(f.items), f.next_id, id(f.access))
    if isinstance(f, EventFdFile):  # the drivers' references and the virqfds waiting
        return (*base, f.ctx.kref, f.ctx.count, [id(w) for w in f.ctx.waiters])
    return base


def _ctxs(files: list[VfioFile]) -> list[IommufdCtx]:
    out: dict[int, IommufdCtx] = {}
    for f in files:
        if isinstance(f, IommufdFile | AccessFile):
            out[id(f.ctx)] = f.ctx
    return list(out.values())


# -- vfio-pci ---------------------------------------------------------------------------------
def _pci(c: VfioPciCore | None) -> tuple[Any, ...] | None:
    """An open device's vfio-pci state: the IRQ type, each IRQ context (trigger, mask,
    unmask virqfd, host vector), ``virq_disabled``, the host vectors allocated, the
    ERR/REQ triggers, the BARs mapped, whether a saved state is stored. (``msi_qmax``
    is left out: ``vfio_msi_disable`` leaves it as ``vfio_msi_enable`` set it.)"""
    if c is None:
        return None
    irqs = c.irqs

    def ref(e: EventFdCtx | None) -> int | None:
        return None if e is None else id(e)

    ctx = {v: (ref(x.trigger), x.masked, None if x.unmask is None else
               (id(x.unmask), id(x.unmask.eventfd)), x.msg) for v, x in sorted(irqs.ctx.items())}
    return (irqs.irq_type, ctx, irqs.virq_disabled, list(irqs.msi_msgs),
            ref(irqs.err_trigger), ref(irqs.req_trigger), sorted(c.barmap),
            c.saved_state is not None, id(c.config))


# -- iommufd ----------------------------------------------------------------------------------
def _ctx(c: IommufdCtx) -> tuple[Any, ...]:
    objects = {i: _object(o) for i, o in sorted(c.objects.items())}
    pages = {id(a.pages): _pages(a.pages) for o in c.objects.values() if isinstance(o, Ioas)
             for a in o.iopt.areas() if a.pages is not None}
    return (objects, sorted(c._reserved), c.account_mode,
            None if c.vfio_ioas is None else c.vfio_ioas.id, pages)


def _object(o: Any) -> tuple[Any, ...]:
    base: tuple[Any, ...] = (type(o).__name__, id(o), o.users)
    if isinstance(o, Ioas):
        iopt = o.iopt
        sp = iopt.space
        areas = [(a.iova, a.last, a.start_byte, a.prot, id(a.pages), id(a.storage_domain),
                  a.num_accesses, a.prevent_access) for a in iopt.areas()]
        reserved = [(r.start, r.last, id(r.owner)) for r in sp.reserved]
        return (*base, areas, reserved, list(sp.allowed), sp.iova_alignment,
                [id(d) for d in iopt.domains], [id(d) for d in iopt.noncoherent],
                [id(a) for a in iopt.accesses], iopt.disable_large_pages,
                [h.id for h in o.hwpts])
    if isinstance(o, HwptPaging):
        return (*base, id(o.domain), id(o.ioas), o.auto_domain, o.enforce_cache_coherency,
                [d.id for d in o.devices])
    if isinstance(o, Device):
        return (*base, None if o.hwpt is None else o.hwpt.id, id(o.dev))
    if isinstance(o, Access):
        return (*base, id(o.ioas), id(o.ioas_unpin), o.iova_alignment)
    return base


def _pages(p: Any) -> tuple[Any, ...]:
    xarray = tuple(sorted((key, _digest(pfns)) for key, pfns in p._xarray.items()))
    refs = getattr(getattr(p.source, "memfd", None), "refs", None)
    return (p.npinned, p.last_npinned, p.users, dict(p.accesses), xarray,
            [id(a) for a in p.domain_areas], (p.account.mode, id(p.account.mm)), refs)


# -- VFIO type1 -------------------------------------------------------------------------------
def _container(f: Container) -> tuple[Any, ...]:
    groups = [g.id for g in f.groups]
    it = f.iommu
    if it is None:
        return (groups, None)
    dmas = [(d.iova, d.size, d.vaddr, d.prot, d.locked_vm, d.bitmap, d.vaddr_invalid,
             d.iommu_mapped, id(d.mm)) for d in it.dmas]
    domains = [(id(d.domain), [g.id for g in d.groups], d.enforce_cache_coherency)
               for d in it.domains]
    return (groups, dmas, domains, list(it.iova_list), it.dma_avail, it.dirty_page_tracking,
            it.pgsize_bitmap, it.vaddr_invalid_count, it.num_non_pinned_groups,
            it.stats.pinned_pages)


# -- IOMMU ------------------------------------------------------------------------------------
def live_domains(m: Machine, procs: list[Process]) -> list[IommuDomain]:
    """Every domain something holds: the groups', the HWPTs', the type1 containers'."""
    out: dict[int, IommuDomain] = {}
    for g in m.core.groups.values():
        for d in (g.domain, g.default_domain):
            if d is not None:
                out[id(d)] = d
    files = _files(procs)
    for c in _ctxs(files):
        for o in c.objects.values():
            if isinstance(o, HwptPaging):
                out[id(o.domain)] = o.domain
    for f in files:
        if isinstance(f, Container) and f.iommu is not None:
            for vd in f.iommu.domains:
                out[id(vd.domain)] = vd.domain
    return list(out.values())


def _pgtbl(d: IommuDomain) -> Any:
    return getattr(d, "pgtbl", None) or getattr(d.ops, "pgtbl", None)


def _kept_msi_cookies(ctxs: list[IommufdCtx]) -> set[int]:
    """The domains of HWPTs whose MSI cookie Linux 6.12 keeps whatever the attach that
    made it did (``iommufd_group_setup_msi`` sets ``hwpt_paging->msi_cookie`` before the
    group is attached, and a failed attach leaves both)."""
    return {id(o.domain) for c in ctxs for o in c.objects.values()
            if isinstance(o, HwptPaging) and o.msi_cookie}


def _domain(d: IommuDomain, kept_msi_cookie: bool = False) -> tuple[Any, ...]:
    """The domain's translations (leaves with their raw entries, so dirty bits count),
    its dirty tracking state and its MSI cookie (one a HWPT keeps with no doorbell
    mapped yet counts as none: see :func:`_kept_msi_cookies`)."""
    pgtbl = _pgtbl(d)
    if pgtbl is not None:
        leaves: Any = [(iova, size, pte) for iova, size, leaf, pte in pgtbl.iter_entries()
                       if leaf]
    elif isinstance(d.ops, MockDomainOps):
        leaves = sorted((c, _digest(a)) for c, a in d.ops.pfns._chunks.items())
    else:
        leaves = None
    tracking = getattr(d.dirty_ops, "tracking", None)
    cookie: Any = id(d.cookie)
    if kept_msi_cookie and isinstance(d.cookie, MsiCookie) and not d.cookie.msi_pages:
        cookie = id(None)
    return (d.type, leaves, tracking, cookie, d.pgsize_bitmap)


def _driver(m: Machine) -> tuple[Any, ...]:
    drv = m.driver
    if drv is None:
        return ()
    tags: list[Any] = []
    if hasattr(drv, "asid_xa"):
        tags = [sorted(drv.asid_xa), sorted(drv.vmids)]
    hw = m.translator
    routes = {sid: id(d) for sid, d in getattr(hw, "domains", {}).items()}
    return (tags, routes, sorted(getattr(drv, "device_flags", {}).items()))


def check_tables(m: Machine, procs: list[Process]) -> None:
    """Every page of IOMMU table memory belongs to a live domain's table (no orphan)."""
    held = 0
    for d in live_domains(m, procs):
        pgtbl = _pgtbl(d)
        if pgtbl is not None:
            pgtbl._check()
            held += pgtbl.stats.table_bytes
    assert m.mem.iommu_pages * 4096 == held, \
        f"{m.mem.iommu_pages} table pages, live domains hold {held // 4096}"
