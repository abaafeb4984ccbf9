"""Linux 7.0's vIOMMU objects of an iommufd context: the vIOMMU, its vDEVICEs and its
vEVENTQs with their fds (drivers/iommu/iommufd/viommu.c, eventq.c, driver.c). 6.12 has
none of them (its ioctl table lacks the commands: ENOTTY).

A vIOMMU holds its nest-parent HWPT (a user of it) and is held by every vDEVICE,
every nested HWPT made on it and every vEVENTQ (IOMMU_DESTROY of a vIOMMU with any of
them is EBUSY). A vEVENTQ is also held by its fd (``iommufd_eventq_init``'s
``refcount_inc``) until the fd is closed, and the fd holds the context's file.
A device has at most one vDEVICE; a vIOMMU has at most one vDEVICE per virtual id
and one vEVENTQ per type.

The vEVENTQ is built on the event-queue base of :mod:`.eventq` (its file, fd and
poll); this module adds its records, their sequence numbers and the LOST_EVENTS rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    AlreadyExists,
    InvalidArgument,
    KernelError,
    NoEntry,
    NotSupported,
    OutOfMemory,
)
from ..iommu.domain import DomainType
from ..mem.fault import xa_nodes_needed
from ..uapi import iommufd as _h
from . import uapi as u
from .eventq import EPOLLIN, EPOLLRDNORM, CopyToUser, EventqObject
from .objects import Device, HwptNested, HwptPaging, IommufdObject

if TYPE_CHECKING:
    from .objects import IommufdCtx

__all__ = ["Vdevice", "Veventq", "Viommu", "viommu_report_event"]

INT_MAX = (1 << 31) - 1
_HEADER = u.VEVENT_HEADER.size  # sizeof(struct iommufd_vevent_header)


@dataclass(eq=False, kw_only=True)
class Viommu(IommufdObject):
    """``struct iommufd_viommu``: ``type``, the nest-parent ``hwpt`` it holds, the
    driver's part (``ops``: ``alloc_domain_nested``, ``cache_invalidate``, ``destroy``),
    ``iommu_dev`` (the IOMMU instance behind it), the vDEVICEs by virtual id (``vdevs``)
    and the vEVENTQs by type."""

    type: int
    hwpt: HwptPaging = field(repr=False)
    iommu_dev: Any = field(repr=False)
    ops: Any = field(default=None, repr=False)
    vdevs: dict[int, Vdevice] = field(default_factory=dict, repr=False)
    veventqs: dict[int, Veventq] = field(default_factory=dict, repr=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_viommu_destroy``: the driver's ``destroy``, the parent let go of."""
        if self.ops is not None and hasattr(self.ops, "destroy"):
            self.ops.destroy()
        self.hwpt.users -= 1

    def holding(self) -> list[IommufdObject]:
        return [self.hwpt]

    def report_event(self, type: int, data: bytes, fail: Any) -> None:
        """``iommufd_viommu_report_event`` (:func:`viommu_report_event`), for drivers."""
        viommu_report_event(self, type, data, fail)

    def find_dev(self, virt_id: int) -> Any:
        """``iommufd_viommu_find_dev``: the device with that virtual id, or None."""
        vdev = self.vdevs.get(virt_id)
        return vdev.idev.dev if vdev is not None else None

    def get_vdev_id(self, dev: Any) -> int:
        """``iommufd_viommu_get_vdev_id``: the device's virtual id (ENOENT without).
        ``dev`` is the device or the driver's handle of it (``dev_iommu.priv``)."""
        for vdev in self.vdevs.values():
            d = vdev.idev.dev
            if d is dev or (d.dev_iommu is not None and d.dev_iommu.priv is dev):
                return vdev.virt_id
        raise NoEntry(f"{dev!r} has no vDEVICE on vIOMMU {self.id}")


@dataclass(eq=False, kw_only=True)
class Vdevice(IommufdObject):
    """``struct iommufd_vdevice``: the device ``idev`` as the guest sees it behind
    ``viommu``, at ``virt_id`` (a vSID for SMMUv3)."""

    viommu: Viommu = field(repr=False)
    idev: Device = field(repr=False)
    virt_id: int = 0

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_vdevice_destroy`` / ``_abort``: out of the vIOMMU's array (only if
        it is the one there: a failed insert left another), the vIOMMU let go of, the
        device's ``vdev`` cleared."""
        if self.viommu.vdevs.get(self.virt_id) is self:
            del self.viommu.vdevs[self.virt_id]
        self.viommu.users -= 1
        if getattr(self.idev, "vdev", None) is self:
            self.idev.vdev = None

    def holding(self) -> list[IommufdObject]:
        return [self.viommu]


@dataclass
class _Vevent:
    """``struct iommufd_vevent``: a header and ``data`` (None for the queue's one
    LOST_EVENTS header, ``lost_events_header``)."""

    flags: int
    sequence: int = 0
    data: bytes | None = None


@dataclass(eq=False, kw_only=True)
class Veventq(EventqObject):
    """``struct iommufd_veventq`` on the event-queue base (:mod:`.eventq`): at most
    ``depth`` events of ``type`` for ``viommu``, a 31-bit ``sequence``; ``deliver`` may
    end with the queue's one LOST_EVENTS header (``lost``). Its file has ``read`` only."""

    anon_name = "[iommufd-viommu-event]"

    viommu: Viommu = field(repr=False)
    type: int
    depth: int
    sequence: int = 0
    num_events: int = 0
    lost: _Vevent = field(
        default_factory=lambda: _Vevent(_h.IOMMU_VEVENTQ_FLAG_LOST_EVENTS), repr=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_veventq_abort``: the events freed, the vIOMMU let go of, out of its
        list."""
        self.deliver.clear()
        self.num_events = 0
        self.viommu.users -= 1
        if self.viommu.veventqs.get(self.type) is self:
            del self.viommu.veventqs[self.type]

    def holding(self) -> list[IommufdObject]:
        return [self.viommu]

    def poll(self) -> int:
        """``iommufd_eventq_fops_poll`` of a vEVENTQ: readable while a record waits;
        never writable (only a fault queue is)."""
        return EPOLLIN | EPOLLRDNORM if self.deliver else 0

    def handler(self, vevent: _Vevent) -> None:
        """``iommufd_vevent_handler``: a LOST_EVENTS header at the tail goes (so it is
        never followed by an event), ``vevent`` is appended with the next sequence
        number (``vevent`` may be that header again, a sequence update)."""
        if self.deliver and self.deliver[-1] is self.lost:
            self.deliver.pop()
        self.deliver.append(vevent)
        vevent.sequence = self.sequence
        self.sequence = (self.sequence + 1) & INT_MAX
        self.wakeups += 1  # wake_up_interruptible

    def read_records(self, count: int, copy_out: CopyToUser) -> int:
        """``iommufd_veventq_fops_read``: whole records (header and data) while they fit
        in ``count``; a LOST_EVENTS header is 8 bytes and is copied out of the list
        (``kzalloc(GFP_ATOMIC)``: a failure ends the read). A record that does not fit,
        or whose copy faults (EFAULT), stays first. The bytes given, or the error when
        none were; nothing queued reads 0: the read never blocks. O(records read)."""
        done = 0
        err: KernelError | None = None
        fail = self.ctx.mem.fail_nth
        while self.deliver:
            cur = self.deliver[0]
            if cur is self.lost and fail.fails("kzalloc(iommufd_vevent lost copy)"):
                break
            size = _HEADER + (len(cur.data) if cur.data is not None else 0)
            if count - done < size:
                break  # iommufd_veventq_deliver_restore: it stays first
            try:
                copy_out(done, u.VEVENT_HEADER.pack(cur.flags, cur.sequence) +
                         (cur.data or b""))
            except KernelError as e:
                err = e
                break
            self.deliver.pop(0)
            if cur.data is not None:
                self.num_events -= 1
            done += size
        if not done and err is not None:
            raise err
        return done


def viommu_report_event(viommu: Viommu, type: int, data: bytes, fail: Any) -> None:
    """``iommufd_viommu_report_event``: EOPNOTSUPP without a vEVENTQ of ``type``; a full
    queue (``depth`` events) or a failed ``kmalloc(GFP_ATOMIC)`` (ENOMEM) queues the
    LOST_EVENTS header in its place (the event is lost, its sequence number spent);
    else the event is queued. O(1)."""
    veventq = viommu.veventqs.get(type)
    if veventq is None:
        raise NotSupported(f"vIOMMU {viommu.id}: no vEVENTQ of type {type:#x}")
    if veventq.num_events == veventq.depth:
        veventq.handler(veventq.lost)
        return
    if fail.fails("kmalloc(iommufd_vevent)"):
        veventq.handler(veventq.lost)
        raise OutOfMemory("iommufd_viommu_report_event: kmalloc")
    veventq.num_events += 1
    veventq.handler(_Vevent(0, data=bytes(data)))


def check_vdevice_virt_id(virt_id: int) -> None:
    """``iommufd_vdevice_alloc_ioctl``: a virtual id indexes an xarray (EINVAL past
    ULONG_MAX; a u64 on x86_64 never is)."""
    if virt_id > (1 << 64) - 1:
        raise InvalidArgument(f"VDEVICE_ALLOC: virt_id {virt_id:#x}")


# -- the ioctls' object work (the ioctl handlers are in :mod:`.file`) ------------------------

def _iommu_dev(ctx: IommufdCtx) -> Any:
    """``__iommu_get_iommu_dev``: the model has one IOMMU driver instance per machine."""
    return ctx.core.driver


def viommu_alloc(ctx: IommufdCtx, flags: int, type: int, idev: Device, hwpt_id: int,
                 user_data: Any) -> Viommu:
    """``iommufd_viommu_alloc_ioctl`` after the device lookup: EOPNOTSUPP for a driver
    without vIOMMUs or one that has none of ``type`` (``get_viommu_size`` 0); ENOENT for
    an id that is not a paging HWPT, EINVAL for one that is no nest parent; the object
    (its id reserved: the caller finalizes or :func:`abort`), a user of the parent; the
    driver's ``viommu_init`` (with the data only when there is some), whose error
    destroys the object again."""
    driver = ctx.core.driver
    if not hasattr(driver, "get_viommu_size") or not hasattr(driver, "viommu_init"):
        raise NotSupported("VIOMMU_ALLOC: the IOMMU driver has no vIOMMU")
    master = idev.dev.dev_iommu.priv if idev.dev.dev_iommu else None
    if not driver.get_viommu_size(master, type):
        raise NotSupported(f"VIOMMU_ALLOC: the IOMMU has no vIOMMU of type {type:#x}")
    hwpt: HwptPaging = ctx.get(hwpt_id, HwptPaging)
    if not hwpt.nest_parent:
        raise InvalidArgument(f"VIOMMU_ALLOC: HWPT {hwpt_id} is not a nest parent")
    id = ctx.object_alloc("iommufd_viommu")
    viommu = Viommu(id=id, type=type, hwpt=hwpt, iommu_dev=_iommu_dev(ctx))
    hwpt.users += 1
    try:
        viommu.ops = driver.viommu_init(viommu, hwpt.domain,
                                        user_data if user_data.len else None)
    except Exception:
        abort(ctx, viommu)
        raise
    return viommu


def abort(ctx: IommufdCtx, obj: IommufdObject) -> None:
    """``iommufd_object_abort_and_destroy`` of an object never finalized."""
    obj.destroy(ctx)
    ctx.abort_id(obj.id)


def vdevice_alloc(ctx: IommufdCtx, viommu_id: int, dev_id: int, virt_id: int) -> Vdevice:
    """``iommufd_vdevice_alloc_ioctl`` up to the response: EINVAL for a virtual id past
    ULONG_MAX; the vIOMMU, then the device (ENOENT); EINVAL for a device behind another
    IOMMU; EEXIST for a device that has a vDEVICE already; the object (``kzalloc``, its
    id), a user of the vIOMMU; its slot in the vIOMMU's xarray (``xa_cmpxchg``: EEXIST
    for a virtual id taken; the slot's nodes). Failures after the object destroy it."""
    check_vdevice_virt_id(virt_id)
    viommu: Viommu = ctx.get(viommu_id, Viommu)
    idev: Device = ctx.get(dev_id, Device)
    if viommu.iommu_dev is not _iommu_dev(ctx):
        raise InvalidArgument("VDEVICE_ALLOC: the device is behind another IOMMU")
    if idev.vdev is not None:
        raise AlreadyExists(f"VDEVICE_ALLOC: device {dev_id} has vDEVICE {idev.vdev.id}")
    id = ctx.object_alloc("iommufd_vdevice")
    vdev = Vdevice(id=id, viommu=viommu, idev=idev, virt_id=virt_id)
    viommu.users += 1
    idev.vdev = vdev
    try:
        if virt_id in viommu.vdevs:
            raise AlreadyExists(f"VDEVICE_ALLOC: virtual id {virt_id:#x} is taken on "
                                f"vIOMMU {viommu_id}")
        # xa_cmpxchg at the 64-bit index (unsigned long): the nodes it allocates
        ctx.mem.fail_nth.xa_nodes("viommu->vdevs", xa_nodes_needed(
            np.array(sorted(viommu.vdevs), dtype=np.uint64), virt_id, virt_id))
        viommu.vdevs[virt_id] = vdev
    except Exception:
        abort(ctx, vdev)
        raise
    return vdev


def veventq_alloc(ctx: IommufdCtx, flags: int, viommu_id: int, type: int, depth: int,
                  rsvd: int) -> Veventq:
    """``iommufd_veventq_alloc`` up to its file: EOPNOTSUPP for flags, ``__reserved`` or
    the DEFAULT type; EINVAL for a depth of 0; the vIOMMU (ENOENT); EEXIST when it has
    a vEVENTQ of this type; the object (``kzalloc``, its id), a user of the vIOMMU, in
    its list. Any type but DEFAULT is taken, whether or not the driver reports it."""
    if flags or rsvd or type == _h.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise NotSupported(f"VEVENTQ_ALLOC: flags {flags:#x}, __reserved {rsvd:#x}, "
                           f"type {type:#x}")
    if not depth:
        raise InvalidArgument("VEVENTQ_ALLOC: veventq_depth 0")
    viommu: Viommu = ctx.get(viommu_id, Viommu)
    if type in viommu.veventqs:
        raise AlreadyExists(f"VEVENTQ_ALLOC: vIOMMU {viommu_id} has a vEVENTQ of type "
                            f"{type:#x}")
    id = ctx.object_alloc("iommufd_veventq")
    veventq = Veventq(id=id, ctx=ctx, viommu=viommu, type=type, depth=depth)
    viommu.users += 1
    viommu.veventqs[type] = veventq
    return veventq


def viommu_alloc_hwpt_nested(ctx: IommufdCtx, viommu: Viommu, flags: int,
                             user_data: Any) -> Any:
    """``iommufd_viommu_alloc_hwpt_nested``: EOPNOTSUPP for a flag beyond FAULT_ID_VALID
    and PASID, no driver data, or a vIOMMU without ``alloc_domain_nested``; the object
    (its id), a user of the vIOMMU (not of the parent HWPT); the driver's domain
    (``flags`` without FAULT_ID_VALID), which must be NESTED (EOPNOTSUPP, a kernel
    WARN). Errors destroy the object again."""
    fault_id_valid = _h.IOMMU_HWPT_FAULT_ID_VALID
    if flags & ~(fault_id_valid | _h.IOMMU_HWPT_ALLOC_PASID) or not user_data.len or \
            not hasattr(viommu.ops, "alloc_domain_nested"):
        raise NotSupported(f"HWPT_ALLOC: a nested HWPT on vIOMMU {viommu.id} with flags "
                           f"{flags:#x} and {user_data.len} bytes of data")
    id = ctx.object_alloc("iommufd_hwpt_nested")
    viommu.users += 1
    try:
        domain = viommu.ops.alloc_domain_nested(flags & ~fault_id_valid, user_data)
    except Exception:
        viommu.users -= 1
        ctx.abort_id(id)
        raise
    hwpt = HwptNested(id=id, domain=domain, parent=viommu.hwpt, viommu=viommu)
    if domain.type != DomainType.NESTED:
        ctx.warnings["iommufd_viommu_alloc_hwpt_nested: not a NESTED domain"] += 1
        abort(ctx, hwpt)
        raise NotSupported(f"HWPT_ALLOC: {domain!r} is not a nested domain")
    return hwpt
