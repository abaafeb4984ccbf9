"""The objects of an iommufd context: IOAS, paging HWPT, device, access
(drivers/iommu/iommufd/main.c, ioas.c, hw_pagetable.c, device.c; 6.12 and 7.0).

Objects get the lowest free id from 1 (``xa_alloc`` with XA_FLAGS_ALLOC1),
reserved when the object is allocated and published when it is finalized.
An object something depends on is busy (IOMMU_DESTROY gives EBUSY): an IOAS
while a HWPT or an access uses it, a HWPT while a device is attached to it,
a device while its driver has it bound and an access until the driver that
made it destroys it (both take a ``users`` reference of their own). A bound
device (other than a selftest mock device) and an access hold the context's
file, as ``iommufd_ctx_get`` does, so closing the fd does not release the
context while they exist. Attaching a device to an IOAS reuses one of the
IOAS's automatic HWPTs the device accepts (a refusal with EINVAL tries the
next) or allocates a new one; an automatic HWPT goes with its last device.
"""

from __future__ import annotations

import errno
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dma.cookie import get_msi_cookie
from ..errors import (
    Busy,
    InvalidArgument,
    KernelError,
    NoDevice,
    NoEntry,
    NotPermitted,
    NotSupported,
    Overflow,
)
from ..iommu.domain import DomainType, IommuDomain
from ..iommu.iopf import AttachHandle
from ..iommu.resv import IommuCap, ResvType
from ..iommu.user_data import IommuUserData
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ..mem.fault import xa_nodes_needed
from ..mem.mm import pfn_runs
from ..prot import Prot
from ..sizes import PAGE_SIZE
from ..syscall.file import fput, get_file
from .io_pagetable import IoPagetable
from .iova_space import ULONG_MAX
from .pages import ACCOUNT_MM, ACCOUNT_USER, PagesStats
from .sources import UserSource

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..iommu.core import IommuCore
    from ..mem import PhysMem
    from ..mem.mm import MmStruct
    from ..syscall.file import File
    from .area import IoptArea
    from .cache_flush import CacheFlush
    from .pages import IoptPages

__all__ = [
    "HWPT_ALLOC_DIRTY_TRACKING",
    "Access",
    "Device",
    "HwptNested",
    "HwptPaging",
    "Ioas",
    "IommufdCtx",
    "IommufdObject",
    "find_hwpt_paging",
]

HWPT_ALLOC_DIRTY_TRACKING = 1 << 1  # IOMMU_HWPT_ALLOC_DIRTY_TRACKING
_NEST_PARENT = 1 << 0  # IOMMU_HWPT_ALLOC_NEST_PARENT
_FAULT_ID_VALID = 1 << 2  # IOMMU_HWPT_FAULT_ID_VALID
_PASID = 1 << 3  # IOMMU_HWPT_ALLOC_PASID (7.0)
ACCESS_RW_WRITE = 1 << 0  # IOMMUFD_ACCESS_RW_WRITE


@dataclass(eq=False)
class IommufdObject:
    """``struct iommufd_object``: ``users`` counts the objects that depend on this one."""

    id: int = 0
    users: int = field(default=0, init=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        """Undo everything the object holds (the object's ``destroy`` op)."""

    def holding(self) -> list[IommufdObject]:
        """The objects this one is a user of, beyond those :meth:`IommufdCtx._check`
        knows by type (tests only)."""
        return []

    def own_users(self) -> int:
        """Users of this object that are not objects (an open fd), for ``_check``."""
        return 0


@dataclass(eq=False, kw_only=True)
class Ioas(IommufdObject):
    """``struct iommufd_ioas``."""

    iopt: IoPagetable = field(repr=False)
    hwpts: list[HwptPaging] = field(default_factory=list, repr=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_ioas_destroy``: unmap everything; an area an access will not let go
        of (EDEADLOCK) is a kernel WARN, and the destroy goes on."""
        try:
            self.iopt.unmap_all()
        except KernelError as e:
            ctx.warnings[f"iommufd_ioas_destroy: iopt_unmap_all: "
                         f"{errno.errorcode.get(e.errno or 0, e.errno)}"] += 1


#: ids a ``struct iommufd_sw_msi_maps`` bitmap holds (a u64)
_SW_MSI_IDS = 64


@dataclass
class SwMsiMap:
    """``struct iommufd_sw_msi_map`` (Linux 7.0): one doorbell page of the context, at
    page ``pgoff`` of a software MSI window, with the id HWPTs and groups note it by."""

    sw_msi_start: int
    msi_addr: int
    pgoff: int
    id: int


@dataclass(eq=False, kw_only=True)
class HwptPaging(IommufdObject):
    """``struct iommufd_hwpt_paging``."""

    domain: IommuDomain = field(repr=False)
    ioas: Ioas = field(repr=False)
    auto_domain: bool = False
    nest_parent: bool = False
    enforce_cache_coherency: bool = False
    msi_cookie: bool = False  # 6.12: iommu_get_msi_cookie was called on the domain
    devices: list[Device] = field(default_factory=list, repr=False)
    present_sw_msi: set[int] = field(default_factory=set)  # 7.0: doorbells mapped (ids)
    fault: Any = None  # the eventq.FaultObject it delivers I/O page faults to (7.0 only)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_hwpt_paging_destroy``: out of the IOAS, domain freed, the fault
        object let go of."""
        self.ioas.iopt.remove_domain(self.domain)
        self.ioas.hwpts.remove(self)
        self.ioas.users -= 1
        self.domain.free()
        if self.fault is not None:
            self.fault.users -= 1


@dataclass(eq=False, kw_only=True)
class HwptNested(IommufdObject):
    """``struct iommufd_hwpt_nested``: a user-managed domain over ``parent``, which it
    holds (a user of the parent's object); one made on a vIOMMU (7.0) holds the vIOMMU
    instead and has its HWPT as ``parent``."""

    domain: IommuDomain = field(repr=False)
    parent: HwptPaging = field(repr=False)
    viommu: Any = field(default=None, repr=False)  # viommu.Viommu (7.0)
    devices: list[Device] = field(default_factory=list, repr=False)
    fault: Any = None  # the eventq.FaultObject it delivers I/O page faults to
    auto_domain: bool = False

    @property
    def ioas(self) -> Ioas:
        """The parent's IOAS (``find_hwpt_paging``)."""
        return self.parent.ioas

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_hwpt_nested_destroy``: domain freed, the fault object and the
        vIOMMU (7.0, made on one) or the parent let go of."""
        self.domain.free()
        if self.fault is not None:
            self.fault.users -= 1
        if self.viommu is not None:
            self.viommu.users -= 1
        else:
            self.parent.users -= 1


def find_hwpt_paging(hwpt: HwptPaging | HwptNested) -> HwptPaging:
    """``find_hwpt_paging``: the paging HWPT whose IOAS a HWPT translates through, its
    parent for a nested one."""
    return hwpt.parent if isinstance(hwpt, HwptNested) else hwpt


@dataclass(eq=False, kw_only=True)
class Device(IommufdObject):
    """``struct iommufd_device``: a bound device and what it is attached to.
    ``holds_ctx``: the device holds the context's file (every device but a selftest
    mock device, ``iommufd_selftest_is_mock_dev``). ``iopf_enabled`` counts the
    attachments of HWPTs with a fault object that enabled its I/O page faults."""

    dev: DmaDevice = field(repr=False)
    enforce_cache_coherency: bool = False
    hwpt: HwptPaging | HwptNested | None = None
    holds_ctx: bool = True
    iopf_enabled: int = 0
    vdev: Any = None  # its viommu.Vdevice (7.0)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_device_destroy``: its DMA ownership is released (the group goes back
        to its default domain with the last claim), the context's file is put back.
        7.0: a vDEVICE left on it goes first (``iommufd_device_pre_destroy``; the model
        takes it out of the table, where the kernel leaves its id unusable)."""
        held = ctx.objects.get(self.vdev.id) if self.vdev is not None else None
        if held is not None and held is self.vdev:
            ctx.remove(held)
        if self.hwpt is not None:
            ctx.detach(self)
        ctx.core.device_release_dma_owner(self.dev)
        ctx.put_igroup(self.dev)
        if self.holds_ctx:
            ctx.ctx_put()


@dataclass(eq=False, kw_only=True)
class Access(IommufdObject):
    """``struct iommufd_access``: an in-kernel user of an IOAS's pages (an emulated
    device). ``on_unmap`` is ``ops->unmap``; an access that pins must have one."""

    ioas: Ioas | None = None
    ioas_unpin: Ioas | None = None  # what unpin uses while a change blocks new pins
    iova_alignment: int = 1
    on_unmap: Any = None  # Callable[[int, int], None] | None

    def notify_unmap(self, iova: int, length: int) -> None:
        if self.on_unmap is not None:
            self.on_unmap(iova, length)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_access_destroy_object``: detached, the context's file put back."""
        if self.ioas is not None:
            ctx.access_change_ioas(self, None)
        ctx.ctx_put()


class IommufdCtx:
    """``struct iommufd_ctx``: one open of /dev/iommu (or of /dev/vfio/vfio, which
    accounts pinned pages to the mm as VFIO does: ``iommufd_fops_open``)."""

    def __init__(self, core: IommuCore, mem: PhysMem, temp_memory_limit: list[int],
                 cache_flush: CacheFlush | None = None, *,
                 kernel: KernelVersion = DEFAULT_KERNEL, vfio_container: bool = False,
                 file: File | None = None) -> None:
        self.core = core
        self.mem = mem
        self.kernel = kernel
        self.file = file  # ictx->file: what iommufd_ctx_get/put hold
        self.cache_flush = cache_flush  # lab: the machine's flush policy
        self.objects: dict[int, IommufdObject] = {}
        self._reserved: set[int] = set()  # ids allocated, not yet finalized
        self.account_mode = ACCOUNT_MM if vfio_container else ACCOUNT_USER
        self.stats = PagesStats()
        self.temp_memory_limit = temp_memory_limit  # global; selftest SET_TEMP_MEMORY_LIMIT
        self.vfio_ioas: Ioas | None = None  # the VFIO compatibility IOAS
        self.warnings: Counter[str] = Counter()  # WARN()s the kernel would print
        self.releasing = False  # iommufd_fops_release has begun
        # iommufd_group.sw_msi_start of each group a bound device is in (by group id):
        # the last IOMMU_RESV_SW_MSI start an attach found, kept while the group is
        self.sw_msi_start: dict[int, int] = {}
        # Linux 7.0's fd-global doorbell pages (ictx->sw_msi_list, sw_msi_id) and the ids
        # each group's devices use (iommufd_group.required_sw_msi, by group id)
        self.sw_msi_list: list[SwMsiMap] = []
        self.sw_msi_id = 0
        self.required_sw_msi: dict[int, set[int]] = {}
        # the attach handle each group's attachment (PASID 0) has: group->pasid_array
        self.attach_handles: dict[int, AttachHandle] = {}

    # -- the context's file ------------------------------------------------------------
    def ctx_get(self) -> None:
        """``iommufd_ctx_get``: hold the context's file open."""
        if self.file is not None:
            get_file(self.file)

    def ctx_put(self) -> None:
        """``iommufd_ctx_put``: the last reference releases the context."""
        if self.file is not None:
            fput(self.file)

    # -- the object table ----------------------------------------------------------------
    def reserve_id(self) -> int:
        """``_iommufd_object_alloc``: the lowest id neither used nor reserved (the
        ``XA_ZERO_ENTRY`` an allocated, unfinished object holds)."""
        id = next(i for i in itertools.count(1)
                  if i not in self.objects and i not in self._reserved)
        self._reserved.add(id)
        return id

    def object_alloc(self, kind: str) -> int:
        """``_iommufd_object_alloc``: the object (``kzalloc``), then the lowest free id
        reserved in ``ictx->objects`` (``xa_alloc`` of an ``XA_ZERO_ENTRY``, with the
        nodes the xarray needs for it); the id, to :meth:`add` or :meth:`abort_id`."""
        self.mem.fail_nth.check(f"kzalloc({kind})")
        used = np.array(sorted(self.objects.keys() | self._reserved), dtype=np.int64)
        id = next(i for i in itertools.count(1)
                  if i not in self.objects and i not in self._reserved)
        self.mem.fail_nth.xa_nodes("ictx->objects",
                                   xa_nodes_needed(used, id, id, root_ok=False))
        self._reserved.add(id)
        return id

    def abort_id(self, id: int) -> None:
        """``iommufd_object_abort``: give a reserved id back."""
        self._reserved.discard(id)

    def add(self, obj: IommufdObject, id: int = 0) -> IommufdObject:
        """``iommufd_object_finalize``: publish ``obj`` under the id reserved for it, or
        (with none) under a new one."""
        obj.id = id or self.reserve_id()
        self._reserved.discard(obj.id)
        self.objects[obj.id] = obj
        return obj

    def get(self, id: int, kind: type[Any]) -> Any:
        """``iommufd_get_object``: ENOENT for a missing id or an object of another kind
        (or when ``iommufd_should_fail()`` says so)."""
        self.get_object_should_fail()
        obj = self.objects.get(id)
        if not isinstance(obj, kind):
            raise NoEntry(f"no {kind.__name__} with id {id}")
        return obj

    def get_object_should_fail(self, refused: type[KernelError] = NoEntry,
                               caller: str = "") -> None:
        """``iommufd_get_object``'s ``iommufd_should_fail()``: ENOENT, or the error the
        ``caller`` turns it into (``refused``)."""
        if self.fail_nth_get_object(caller):
            raise refused("iommufd_get_object: injected failure")

    def fail_nth_get_object(self, caller: str = "") -> bool:
        """Whether ``iommufd_get_object``'s ``iommufd_should_fail()`` fails this lookup,
        for callers that go on to an error path of their own."""
        site = f"{caller}: iommufd_get_object" if caller else "iommufd_get_object"
        return self.mem.fail_nth.iommufd_should_fail(site)

    def destroy(self, id: int) -> None:
        """IOMMU_DESTROY (``iommufd_object_remove`` without an object): ENOENT for no
        object, EBUSY while something depends on it."""
        obj = self.objects.get(id)
        if obj is None:
            raise NoEntry(f"DESTROY: no object {id}")
        if obj.users:
            raise Busy(f"DESTROY: object {id} is in use by {obj.users} other object(s)")
        self.remove(obj)

    def remove(self, obj: IommufdObject) -> None:
        """Take ``obj`` out of the table and run its destroy op; the caller has checked
        that the table holds ``obj`` itself."""
        assert self.objects.get(obj.id) is obj, f"{obj!r} is not in the table"
        del self.objects[obj.id]
        if obj is self.vfio_ioas:
            self.vfio_ioas = None
        obj.destroy(self)

    def try_remove(self, obj: IommufdObject, why: str) -> bool:
        """``iommufd_object_remove`` of an object the caller holds (``to_destroy``), after
        the caller put its reference: a table that holds another object at ``obj.id``
        (or none) is a kernel WARN and ENOENT, and an object still used is EBUSY; either
        way nothing is removed. Whether ``obj`` went. O(1)."""
        if self.objects.get(obj.id) is not obj:
            self.warnings[f"{why}: object {obj.id} is not in the table"] += 1
            return False
        if obj.users:
            return False
        self.remove(obj)
        return True

    def destroy_user(self, obj: IommufdObject) -> None:
        """``iommufd_object_destroy_user``: the driver drops its own reference (the one
        ``iommufd_device_bind`` or ``iommufd_access_create`` took) and destroys the
        object it holds, never whatever else has its id now. If something still uses
        it the kernel WARNs and leaves it for the context's release."""
        obj.users -= 1
        if not self.try_remove(obj, "iommufd_object_destroy_user") and \
                self.objects.get(obj.id) is obj:
            self.warnings["iommufd_object_destroy_user: object still in use"] += 1

    def release(self) -> None:
        """``iommufd_fops_release``: destroy the objects nothing uses, in id order, until
        none is left. A pass that destroys nothing is a refcount bug, which the kernel
        WARNs about and leaves (counted in :attr:`warnings`). Destroying an object can
        release this context again (the last reference to its file going with it):
        that inner release finishes the work."""
        self.releasing = True
        while self.objects:
            free = [o for o in sorted(self.objects.values(), key=lambda o: o.id)
                    if not o.users]
            if not free:
                self.warnings["iommufd_fops_release: objects still in use"] += 1
                return
            for obj in free:
                if self.objects.get(obj.id) is obj and not obj.users:
                    self.remove(obj)

    def _check(self) -> None:
        """Invariants (tests only, O(objects + areas)): each object under its own id; the
        ``users`` of each object are the objects and drivers holding it (an IOAS: its
        HWPTs and attached accesses; a HWPT: its devices; a device or an access: the
        driver that made it); HWPTs, IOASes and devices point at each other both ways,
        within this context."""
        expected: dict[int, int] = {id(o): 0 for o in self.objects.values()}
        for key, obj in self.objects.items():
            assert obj.id == key, f"{obj!r} is filed under id {key}"
            if isinstance(obj, HwptPaging | HwptNested):
                for idev in obj.devices:
                    assert idev.hwpt is obj and self.objects.get(idev.id) is idev
                expected[id(obj)] += len(obj.devices)
                if obj.fault is not None:
                    assert self.objects.get(obj.fault.id) is obj.fault, f"{obj!r}: fault"
                    expected[id(obj.fault)] += 1
            if getattr(obj, "file", None) is not None and hasattr(obj, "deliver"):
                expected[id(obj)] += 1  # an event queue's open file (eventq.EventqFile)
            if isinstance(obj, HwptPaging):
                assert self.objects.get(obj.ioas.id) is obj.ioas, f"{obj!r}: foreign IOAS"
                assert obj in obj.ioas.hwpts
                expected[id(obj.ioas)] += 1
            elif isinstance(obj, HwptNested):
                held = obj.viommu if obj.viommu is not None else obj.parent
                assert self.objects.get(held.id) is held, f"{obj!r}: parent or vIOMMU"
                expected[id(held)] += 1
            elif isinstance(obj, Access):
                assert obj.ioas is obj.ioas_unpin
                if obj.ioas is not None:
                    assert self.objects.get(obj.ioas.id) is obj.ioas, f"{obj!r}: foreign IOAS"
                    assert obj in obj.ioas.iopt.accesses
                    expected[id(obj.ioas)] += 1
                expected[id(obj)] += 1  # the driver that made it
            elif isinstance(obj, Device):
                assert obj.hwpt is None or obj in obj.hwpt.devices
                expected[id(obj)] += 1  # the driver that bound it
            elif isinstance(obj, Ioas):
                assert all(h.ioas is obj for h in obj.hwpts)
                obj.iopt._check()
            for held in obj.holding():
                assert self.objects.get(held.id) is held, f"{obj!r} holds a foreign {held!r}"
                expected[id(held)] += 1
            expected[id(obj)] += obj.own_users()
        for obj in self.objects.values():
            assert obj.users == expected[id(obj)], \
                f"{obj!r} has {obj.users} users, its holders make {expected[id(obj)]}"
        assert self.vfio_ioas is None or self.objects.get(self.vfio_ioas.id) is self.vfio_ioas
        assert not self._reserved & self.objects.keys()

    # -- IOAS ------------------------------------------------------------------------------
    def ioas_alloc(self) -> Ioas:
        """``iommufd_ioas_alloc``, published at once (the compatibility IOAS)."""
        id, ioas = self.ioas_new()
        self.add(ioas, id)
        return ioas

    def ioas_new(self) -> tuple[int, Ioas]:
        """``iommufd_ioas_alloc`` before ``iommufd_object_finalize``: its reserved id and
        the IOAS, for the caller to :meth:`add` or give back (:meth:`abort_id`)."""
        id = self.object_alloc("iommufd_ioas")
        return id, Ioas(iopt=IoPagetable(self.mem.fail_nth, self.cache_flush))

    def compat_ioas_create(self) -> Ioas:
        """``iommufd_vfio_compat_ioas_create``: the compatibility IOAS, allocated (as an
        ordinary object) if there is none yet."""
        if self.vfio_ioas is not None:
            self.abort_id(self.object_alloc("iommufd_ioas"))  # allocated, then aborted
            return self.vfio_ioas
        self.vfio_ioas = self.ioas_alloc()
        return self.vfio_ioas

    # -- HWPT ------------------------------------------------------------------------------
    def hwpt_paging_alloc(self, ioas: Ioas, idev: Device, flags: int, *, auto: bool,
                          user_data: IommuUserData | None = None, finalize: bool = True
                          ) -> HwptPaging:
        """``iommufd_hwpt_paging_alloc``: EOPNOTSUPP, in the kernel's order, for flags or
        driver data without the driver op that takes them, a flag outside the valid ones
        (6.12: NEST_PARENT, DIRTY_TRACKING; 7.0 adds FAULT_ID_VALID and PASID), dirty
        tracking the IOMMU cannot do, and FAULT_ID_VALID with NEST_PARENT. The driver
        gets ``flags`` without FAULT_ID_VALID. Then a domain for ``idev``, coherency
        enforced if the device needs it, attached at once when automatic for a device
        not attached yet (``immediate_attach``), added to the IOAS. Unless ``finalize``,
        the HWPT keeps a reserved id for the caller to :meth:`add` or
        :meth:`abort_hwpt`."""
        master = _master(idev.dev)
        driver = self.core.driver
        has_op = hasattr(driver, "domain_alloc_paging_flags")  # 6.12: domain_alloc_user
        if (flags or user_data is not None) and not has_op:
            raise NotSupported(f"HWPT_ALLOC: flags {flags:#x} or driver data, and the "
                               "driver cannot allocate with them")
        if flags & ~_hwpt_paging_flags(self.kernel):
            raise NotSupported(f"HWPT_ALLOC: flags {flags:#x}")
        if flags & HWPT_ALLOC_DIRTY_TRACKING and \
                not driver.capable(master, IommuCap.DIRTY_TRACKING):
            raise NotSupported("HWPT_ALLOC: the device's IOMMU cannot track dirty pages")
        if flags & _FAULT_ID_VALID and flags & _NEST_PARENT:
            raise NotSupported("HWPT_ALLOC: FAULT_ID_VALID with NEST_PARENT")
        id = self.object_alloc("iommufd_hwpt_paging")
        try:
            hwpt = self._new_hwpt_paging(ioas, idev, flags, auto=auto, user_data=user_data)
        except KernelError:
            self.abort_id(id)
            raise
        if finalize:
            self.add(hwpt, id)
        else:
            hwpt.id = id
        return hwpt

    def _new_hwpt_paging(self, ioas: Ioas, idev: Device, flags: int, *, auto: bool,
                         user_data: IommuUserData | None) -> HwptPaging:
        master = _master(idev.dev)
        driver = self.core.driver
        if hasattr(driver, "domain_alloc_paging_flags"):  # the driver judges flags and data
            domain = driver.domain_alloc_paging_flags(master, flags & ~_FAULT_ID_VALID,
                                                      user_data)
        else:
            domain = driver.domain_alloc_paging(master, DomainType.UNMANAGED)
        hwpt = HwptPaging(domain=domain, ioas=ioas, auto_domain=auto,
                          nest_parent=bool(flags & _NEST_PARENT))
        if self.kernel >= LINUX_7_0:  # iommufd_hwpt_paging_alloc: cookie_type IOMMUFD
            domain.iommufd_sw_msi = partial(self.sw_msi, hwpt)
        immediate_attach = auto and idev.hwpt is None  # not for a replace
        try:
            if idev.enforce_cache_coherency:
                self._enforce_cc(hwpt)
            if immediate_attach:
                self._attach_domain(idev, hwpt)
            try:
                ioas.iopt.add_domain(domain, coherent=hwpt.enforce_cache_coherency)
            except KernelError:
                if immediate_attach:
                    self._detach_domain(idev, hwpt)
                raise
        except KernelError:
            domain.free()
            raise
        ioas.hwpts.append(hwpt)
        ioas.users += 1
        return hwpt

    def abort_hwpt(self, hwpt: HwptPaging) -> None:
        """``iommufd_object_abort_and_destroy`` of a HWPT that was never finalized."""
        hwpt.destroy(self)
        self.abort_id(hwpt.id)

    def hwpt_nested_alloc(self, parent: HwptPaging, idev: Device, flags: int,
                          user_data: IommuUserData) -> HwptNested:
        """``iommufd_hwpt_nested_alloc`` (6.12): :meth:`check_nested_parent`, the object
        (its id reserved, for the caller to :meth:`add` or :meth:`abort_nested`), a user
        of the parent, the driver's nested domain (6.12 ``domain_alloc_user`` with the
        parent; ``flags`` without FAULT_ID_VALID), which must be NESTED with
        ``cache_invalidate_user`` (EINVAL, a kernel WARN)."""
        self.check_nested_parent(parent, idev, flags, user_data.len)
        id = self.object_alloc("iommufd_hwpt_nested")
        parent.users += 1
        # 6.12 arm-smmu-v3 and intel-iommu (without scalable-mode nesting, which the
        # model's VT-d lacks) answer a parent with EOPNOTSUPP from domain_alloc_user
        alloc: Any = getattr(self.core.driver, "domain_alloc_nested", None)
        try:
            if alloc is None:
                raise NotSupported("HWPT_ALLOC: the driver makes no nested domains")
            domain = alloc(
                _master(idev.dev), flags & ~_FAULT_ID_VALID, parent.domain, user_data)
            if domain.type != DomainType.NESTED or \
                    not hasattr(domain, "cache_invalidate_user"):
                self.warnings["iommufd_hwpt_nested_alloc: not a NESTED domain"] += 1
                domain.free()
                raise InvalidArgument(f"HWPT_ALLOC: {domain!r} is not a nested domain")
        except KernelError:
            parent.users -= 1
            self.abort_id(id)
            raise
        return HwptNested(id=id, domain=domain, parent=parent)

    def abort_nested(self, hwpt: HwptNested) -> None:
        """``iommufd_hwpt_nested_abort`` of a nested HWPT that was never finalized."""
        hwpt.destroy(self)
        self.abort_id(hwpt.id)

    def check_nested_parent(self, parent: HwptPaging, idev: Device, flags: int,
                            data_len: int) -> None:
        """``iommufd_hwpt_nested_alloc`` up to the driver: EOPNOTSUPP for a flag beyond
        FAULT_ID_VALID (7.0: and PASID), no driver data, or a driver without the nested
        op (6.12: ``domain_alloc_user``; 7.0: ``domain_alloc_nested``, which arm-smmu-v3
        lacks as its nesting goes through a vIOMMU); EINVAL for a parent that is
        automatic, not a nest parent, or of another driver."""
        valid = _FAULT_ID_VALID | (_PASID if self.kernel >= LINUX_7_0 else 0)
        has_op = getattr(self.core.driver, "has_domain_alloc_nested", False)
        if flags & ~valid or not data_len or not has_op:
            raise NotSupported(f"HWPT_ALLOC: a nested HWPT with flags {flags:#x} and "
                               f"{data_len} bytes of data")
        if parent.auto_domain or not parent.nest_parent:
            raise InvalidArgument(f"HWPT_ALLOC: HWPT {parent.id} is not a nesting parent")

    def _enforce_cc(self, hwpt: HwptPaging) -> None:
        """``iommufd_hwpt_paging_enforce_cc``: EINVAL if the domain cannot."""
        if hwpt.enforce_cache_coherency:
            return
        enforce = getattr(self.core.driver, "enforce_cache_coherency", None)
        if enforce is None or not enforce(hwpt.domain):
            raise InvalidArgument(f"{hwpt.domain!r} cannot enforce cache coherency")
        hwpt.enforce_cache_coherency = True
        hwpt.ioas.iopt.set_coherent(hwpt.domain)

    # -- devices -------------------------------------------------------------------------
    def bind(self, dev: DmaDevice, *, mock: bool = False) -> Device:
        """``iommufd_device_bind``: EINVAL without cache-coherent DMA through the IOMMU;
        then the context claims the device's DMA (``iommu_device_claim_dma_owner``:
        EPERM if another owner has the group, EBUSY if it is not on its default domain;
        the group moves to its blocking domain), released when the device is destroyed.
        The driver holds a reference until :meth:`unbind` (IOMMU_DESTROY of the device
        is EBUSY), and the device holds the context unless it is a selftest ``mock``."""
        driver = self.core.driver
        master = _master(dev)
        if not driver.capable(master, IommuCap.CACHE_COHERENCY):
            raise InvalidArgument(f"{dev.name}: the IOMMU is not cache coherent")
        self._get_igroup(dev)
        self.core.device_claim_dma_owner(dev, self)
        try:
            id = self.object_alloc("iommufd_device")
        except KernelError:
            self.core.device_release_dma_owner(dev)
            raise
        idev = Device(dev=dev, enforce_cache_coherency=driver.capable(
            master, IommuCap.ENFORCE_CACHE_COHERENCY), holds_ctx=not mock)
        if idev.holds_ctx:
            self.ctx_get()
        idev.users += 1  # the calling driver is a user until iommufd_device_unbind()
        self.add(idev, id)
        return idev

    def _get_igroup(self, dev: DmaDevice) -> None:
        """``iommufd_get_group``: the context's ``iommufd_group`` of the device's group,
        made (``kzalloc``, stored in ``ictx->groups`` at the group's id) unless a bound
        device of the group already has it; it lives while such a device does."""
        group = dev.group
        assert group is not None
        bound = {o.dev.group.id for o in self.objects.values()
                 if isinstance(o, Device) and o.dev.group is not None}
        if group.id in bound:
            return
        self.mem.fail_nth.check("kzalloc(iommufd_group)")
        self.mem.fail_nth.xa_nodes("ictx->groups", xa_nodes_needed(
            np.array(sorted(bound), dtype=np.int64), group.id, group.id))

    def put_igroup(self, dev: DmaDevice) -> None:
        """``iommufd_put_group`` of a destroyed device: the ``iommufd_group`` (and its
        ``sw_msi_start`` and ``required_sw_msi``) goes with the last bound device of its
        group."""
        group = dev.group
        if group is not None and not any(
                isinstance(o, Device) and o.dev.group is group for o in self.objects.values()):
            self.sw_msi_start.pop(group.id, None)
            self.required_sw_msi.pop(group.id, None)

    def attach(self, idev: Device, pt_id: int) -> int:
        """``iommufd_device_attach``: to a HWPT, or to an IOAS through an automatic HWPT;
        the HWPT id. A device already attached (use replace) is EBUSY in 7.0 (its
        ``xa_insert`` into the attachment's device array); 6.12's callers never attach
        twice (EINVAL here)."""
        if idev.hwpt is not None:
            refused = Busy if self.kernel >= LINUX_7_0 else InvalidArgument
            raise refused(f"device {idev.id} is already attached")
        return self._change_pt(idev, pt_id)

    def replace(self, idev: Device, pt_id: int) -> int:
        """``iommufd_device_replace``: move an attached device to ``pt_id``."""
        if idev.hwpt is None:
            raise InvalidArgument(f"device {idev.id} is not attached")
        return self._change_pt(idev, pt_id)

    def _change_pt(self, idev: Device, pt_id: int) -> int:
        """``iommufd_device_change_pt``: a paging or a nested HWPT is used as it is
        (``find_hwpt_paging`` gives the IOAS its reservations go into), an IOAS through
        an automatic HWPT; ENOENT for no object, EINVAL for another kind."""
        self.get_object_should_fail()
        obj = self.objects.get(pt_id)
        old = idev.hwpt
        new: HwptPaging | HwptNested
        if isinstance(obj, HwptPaging | HwptNested):
            if obj is old:
                return obj.id
            self._attach_hwpt(idev, obj)
            new = obj
        elif isinstance(obj, Ioas):
            new = self._auto_get_domain(idev, obj)
        elif obj is None:
            raise NoEntry(f"attach: no object {pt_id}")
        else:
            raise InvalidArgument(f"attach: object {pt_id} is not an IOAS or a HWPT")
        if old is not None and old is not new:
            self._drop_device(old, idev, keep_resv=find_hwpt_paging(old).ioas is
                              find_hwpt_paging(new).ioas)
        return new.id

    def _auto_get_domain(self, idev: Device, ioas: Ioas) -> HwptPaging:
        """``iommufd_device_auto_get_domain``."""
        for hwpt in list(ioas.hwpts):
            if not hwpt.auto_domain:
                continue
            if hwpt is idev.hwpt:
                return hwpt
            try:
                self._attach_hwpt(idev, hwpt)
            except InvalidArgument:
                continue  # incompatible domain: try the next
            return hwpt
        # An attach allocates the HWPT attached (immediate_attach); a replace moves the
        # device once the HWPT is complete, so a failure leaves it where it was.
        immediate = idev.hwpt is None
        hwpt = self.hwpt_paging_alloc(ioas, idev, 0, auto=True, finalize=immediate)
        if not immediate:
            try:
                self._attach_hwpt(idev, hwpt)
            except KernelError:
                self.abort_hwpt(hwpt)
                raise
            self.add(hwpt, hwpt.id)
            return hwpt
        hwpt.devices.append(idev)
        hwpt.users += 1
        idev.hwpt = hwpt
        return hwpt

    def _attach_hwpt(self, idev: Device, hwpt: HwptPaging | HwptNested) -> None:
        """``iommufd_hw_pagetable_attach`` (or, for an attached device,
        ``iommufd_device_do_replace``): the device's reserved regions into the IOAS,
        then the group onto the domain. A replace within the same IOAS keeps the
        reservations the device has there and makes none
        (``iommufd_group_do_replace_reserved_iova``). The HWPT's cache coherency is the
        one it was allocated with ("configured here and unchanged later",
        ``iommufd_hwpt_paging_alloc``): a device that could enforce it uses a HWPT that
        does not as it is; a driver refuses a device that cannot honour a coherent one."""
        ioas = find_hwpt_paging(hwpt).ioas
        same_ioas = idev.hwpt is not None and find_hwpt_paging(idev.hwpt).ioas is ioas
        self._attach_domain(idev, hwpt, reserve=not same_ioas)
        hwpt.devices.append(idev)
        hwpt.users += 1
        idev.hwpt = hwpt

    def _attach_domain(self, idev: Device, hwpt: HwptPaging | HwptNested,
                       reserve: bool = True) -> None:
        """The device's reserved regions into the HWPT's IOAS (unless ``reserve`` is
        False), the MSI window set up (:meth:`_setup_msi`: for an attach only when the
        group's first device comes, for a replace always), the attach handle
        (``kzalloc``), then the group onto the domain: ``iommu_attach_group`` for a
        device not attached yet (EBUSY unless the group is on a core domain),
        ``iommu_group_replace_domain`` for one that is. On failure the reservations go:
        an attach takes back the device's (``iopt_remove_reserved_iova``), a replace
        every reservation the group's attached devices hold in the new HWPT's IOAS
        (``iommufd_group_remove_reserved_iova``), even when that IOAS is the one the
        group stays attached through and no reservation was made: a kernel wart kept
        (6.12 and 7.0), after which the group's reserved ranges are free to map in its
        own IOAS. An MSI cookie made on the way stays (see :meth:`_setup_msi`).

        The reservations and the MSI window are the paging HWPT's a nested one sits on
        (``find_hwpt_paging``). A HWPT with a fault object enables the device's I/O page
        faults before the domain goes on (:meth:`_iopf_enable`, undone if it fails; a
        replace only when the old HWPT had none), and the attachment's handle is what
        the faults are reported through; a replace then answers INVALID to the faults
        of the old HWPT's queue that came through the old handle and, onto a HWPT
        without a fault object, disables them (``iommufd_hwpt_attach_device``,
        ``iommufd_hwpt_replace_device``)."""
        paging = find_hwpt_paging(hwpt)
        iopt = paging.ioas.iopt
        group = idev.dev.group
        assert group is not None
        attaching = idev.hwpt is None
        fail = self.mem.fail_nth
        others = [o for o in self.objects.values() if isinstance(o, Device) and o is not idev
                  and o.hwpt is not None and o.dev.group is group]
        if attaching and self.kernel >= LINUX_7_0:
            self._reserve_attach(idev, others)
        if reserve:  # a replace passes no sw_msi_start (iommufd_group_do_replace_reserved_iova)
            self._enforce_resv_regions(idev, iopt, sw_msi=attaching)
        old = idev.hwpt
        first = not (attaching and others)  # the group's first device makes the handle
        iopf_on = first and hwpt.fault is not None and (attaching or old is None or
                                                        old.fault is None)
        try:
            if not others or not attaching:
                self._setup_msi(group.id, paging)
            fail.check("kzalloc(iommufd_attach_handle)")
            if iopf_on:
                self._iopf_enable(idev)
            try:
                if attaching:
                    if self.kernel >= LINUX_7_0:  # iommu_attach_group_handle: XA_ZERO_ENTRY
                        fail.xa_nodes("group->pasid_array", xa_nodes_needed(
                            np.array([], dtype=np.int64), 0, 0, root_ok=False))
                    self.core.attach_group(hwpt.domain, group)
                else:
                    self.core.set_group_domain(group, hwpt.domain)
            except KernelError:
                if iopf_on:
                    self._iopf_disable(idev)
                raise
            old_handle = self.attach_handles.get(group.id)
            if first:
                self.attach_handles[group.id] = AttachHandle(hwpt.domain, idev)
            if not attaching and old is not None and old.fault is not None:
                old.fault.auto_response(old_handle)
                if hwpt.fault is None:
                    self._iopf_disable(idev)
        except KernelError:
            if not attaching:
                for o in list(self.objects.values()):
                    if isinstance(o, Device) and o.dev.group is group and o.hwpt is not None:
                        iopt.space.remove_reservations(o)
            elif reserve:
                iopt.space.remove_reservations(idev)
            raise

    def _reserve_attach(self, idev: Device, others: list[Device]) -> None:
        """Linux 7.0's ``iommufd_hw_pagetable_attach`` before the reserved regions: the
        group's slot for PASID 0 in ``igroup->pasid_attach`` (``xa_cmpxchg`` of an
        XA_ZERO_ENTRY) and its ``struct iommufd_attach`` (``kzalloc``, ENOMEM), both only
        for the group's first attached device, then the device's slot in the
        attachment's ``device_array`` (``xa_insert`` at its object id). The xarray nodes
        are retried, never failed; an error later gives the slots and the attachment
        back."""
        fail = self.mem.fail_nth
        if not others:
            fail.xa_nodes("igroup->pasid_attach", xa_nodes_needed(
                np.array([], dtype=np.int64), 0, 0, root_ok=False))
            fail.check("kzalloc(iommufd_attach)")
        held = np.array(sorted(o.id for o in others), dtype=np.int64)
        fail.xa_nodes("attach->device_array",
                      xa_nodes_needed(held, idev.id, idev.id, root_ok=False))

    def _detach_domain(self, idev: Device, hwpt: HwptPaging | HwptNested) -> None:
        """``iommufd_hwpt_detach_device``: the group goes back to its core domain, the
        blocking one as the context owns it (``iommu_detach_group_handle``); with a
        fault object, the faults that came through this attachment are answered
        INVALID (``iommufd_auto_response_faults``) and the device's I/O page faults
        disabled; then the reservations leave the IOAS."""
        group = idev.dev.group
        assert group is not None
        self.core.detach_group(group)
        last = not any(isinstance(o, Device) and o is not idev and o.hwpt is not None and
                       o.dev.group is group for o in self.objects.values())
        handle = self.attach_handles.pop(group.id, None) if last else None
        if hwpt.fault is not None and last:
            hwpt.fault.auto_response(handle)
            self._iopf_disable(idev)
        find_hwpt_paging(hwpt).ioas.iopt.space.remove_reservations(idev)

    def _iopf_enable(self, idev: Device) -> None:
        """``iommufd_fault_iopf_enable``: EINVAL for a PCI virtual function (lab: the
        model has none); the first enable asks the driver
        (``iommu_dev_enable_feature(IOMMU_DEV_FEAT_IOPF)``: ENODEV for a driver without
        ``dev_enable_feat``), the others only count."""
        idev.iopf_enabled += 1
        if idev.iopf_enabled > 1:
            return
        enable = getattr(self.core.driver, "dev_enable_feat", None)
        try:
            if enable is None:
                raise NoDevice(f"{idev.dev.name}: the IOMMU cannot enable I/O page faults")
            enable(idev.dev)
        except KernelError:
            idev.iopf_enabled -= 1
            raise

    def _iopf_disable(self, idev: Device) -> None:
        """``iommufd_fault_iopf_disable``: the last one asks the driver
        (``iommu_dev_disable_feature``), whose answer is not looked at."""
        if not idev.iopf_enabled:
            self.warnings["iommufd_fault_iopf_disable: not enabled"] += 1
            return
        idev.iopf_enabled -= 1
        if not idev.iopf_enabled:
            disable = getattr(self.core.driver, "dev_disable_feat", None)
            if disable is not None:
                disable(idev.dev)

    def _enforce_resv_regions(self, idev: Device, iopt: IoPagetable, *,
                              sw_msi: bool = False) -> None:
        """``iopt_table_enforce_dev_resv_regions``: every region but DIRECT_RELAXABLE is
        reserved, owned by the device (EADDRINUSE over an area or allowed range). With
        ``sw_msi`` (an attach passes ``&igroup->sw_msi_start``) an IOMMU_RESV_SW_MSI
        region's start is noted for the group as it is met, before its reservation,
        and stays noted whatever happens next."""
        if self.mem.fail_nth.iommufd_should_fail("iopt_table_enforce_dev_resv_regions"):
            raise InvalidArgument("iopt_table_enforce_dev_resv_regions: injected failure")
        group = idev.dev.group
        assert group is not None
        try:
            for r in self.core.get_resv_regions(idev.dev):
                if r.type == ResvType.DIRECT_RELAXABLE:
                    continue
                if sw_msi and r.type == ResvType.SW_MSI:
                    self.sw_msi_start[group.id] = r.start
                iopt.space.reserve(r.start, r.last, idev)
        except KernelError:
            iopt.space.remove_reservations(idev)
            raise

    def _setup_msi(self, group_id: int, hwpt: HwptPaging) -> None:
        """``iommufd_group_setup_msi``. Linux 6.12: a group whose device asked for a
        software MSI window (IOMMU_RESV_SW_MSI: the SMMUv3's MSI_IOVA_BASE) has
        ``iommu_get_msi_cookie`` called on the HWPT's domain, once per HWPT
        (``hwpt_paging->msi_cookie``), ENOMEM if the cookie cannot be had. The kernel
        keeps the cookie when the attach fails after it (the HWPT keeps its domain, and
        a later attach finds ``msi_cookie`` set): a wart, not a leak, as the cookie goes
        with the domain. Linux 7.0 (``iommufd_sw_msi``) makes no cookie: the domain
        answers MSI requests itself (:meth:`sw_msi`), and the attach only installs the
        doorbell pages the group's devices already use (the maps of
        ``ictx->sw_msi_list`` in this window that ``required_sw_msi`` names:
        ``iommu_map``, whose error fails the attach; a page mapped stays)."""
        start = self.sw_msi_start.get(group_id)
        if start is None:
            return
        if self.kernel >= LINUX_7_0:
            required = self.required_sw_msi.get(group_id, set())
            for m in self.sw_msi_list:
                if m.sw_msi_start == start and m.id in required:
                    self._sw_msi_install(hwpt, m)
            return
        if hwpt.msi_cookie:
            return
        get_msi_cookie(hwpt.domain, start, self.mem.fail_nth, self.kernel)
        hwpt.msi_cookie = True

    # -- Linux 7.0's software MSI (drivers/iommu/iommufd/driver.c) -----------------------------
    def sw_msi(self, hwpt: HwptPaging, dev: Any, msi_addr: int) -> int:
        """``iommufd_sw_msi``, which ``iommu_dma_prepare_msi`` calls for a HWPT's domain:
        the doorbell untranslated when the device's group has no software MSI window;
        else the context's map of the doorbell page (:meth:`_sw_msi_get_map`) installed
        in the HWPT (:meth:`_sw_msi_install`) and noted as the group's; the IOVA the
        device writes its MSI to. A map made stays in the context when the install
        fails, as in the kernel."""
        group = dev.group
        start = self.sw_msi_start.get(group.id) if group is not None else None
        if start is None:  # PHYS_ADDR_MAX: no IOMMU_RESV_SW_MSI
            return int(msi_addr)
        m = self._sw_msi_get_map(msi_addr & ~(PAGE_SIZE - 1), start)
        self._sw_msi_install(hwpt, m)
        self.required_sw_msi.setdefault(group.id, set()).add(m.id)
        return m.sw_msi_start + m.pgoff * PAGE_SIZE + (msi_addr & (PAGE_SIZE - 1))

    def _sw_msi_get_map(self, msi_addr: int, sw_msi_start: int) -> SwMsiMap:
        """``iommufd_sw_msi_get_map``: the map of ``msi_addr`` in this window if there is
        one; else EOVERFLOW past the 64 ids of a ``struct iommufd_sw_msi_maps`` bitmap,
        then a new map (kzalloc, ENOMEM) at the window's next page."""
        max_pgoff = 0
        for m in self.sw_msi_list:
            if m.sw_msi_start != sw_msi_start:
                continue
            max_pgoff = max(max_pgoff, m.pgoff + 1)
            if m.msi_addr == msi_addr:
                return m
        if self.sw_msi_id >= _SW_MSI_IDS:
            raise Overflow(f"iommufd_sw_msi_get_map: {self.sw_msi_id} doorbell pages")
        self.mem.fail_nth.check("kzalloc(iommufd_sw_msi_map)")
        m = SwMsiMap(sw_msi_start, msi_addr, max_pgoff, self.sw_msi_id)
        self.sw_msi_id += 1
        self.sw_msi_list.append(m)
        return m

    def _sw_msi_install(self, hwpt: HwptPaging, m: SwMsiMap) -> None:
        """``iommufd_sw_msi_install``: the doorbell page mapped READ|WRITE|MMIO at its
        IOVA in the HWPT's domain unless it is there already (``present_sw_msi``)."""
        if m.id in hwpt.present_sw_msi:
            return
        hwpt.domain.map(m.sw_msi_start + m.pgoff * PAGE_SIZE, m.msi_addr, PAGE_SIZE,
                        Prot.READ | Prot.WRITE | Prot.MMIO)
        hwpt.present_sw_msi.add(m.id)

    def detach(self, idev: Device) -> None:
        """``iommufd_device_detach``: back to blocking; an automatic HWPT goes with its
        last device."""
        hwpt = idev.hwpt
        if hwpt is None:
            return
        self._drop_device(hwpt, idev, detach=True)

    def _drop_device(self, hwpt: HwptPaging | HwptNested, idev: Device,
                     detach: bool = False, keep_resv: bool = False) -> None:
        """The device off ``hwpt``: detached, or (a replace) its reservations out of the
        old IOAS unless it stays in it (``keep_resv``)."""
        if detach:
            self._detach_domain(idev, hwpt)
        elif not keep_resv:
            find_hwpt_paging(hwpt).ioas.iopt.space.remove_reservations(idev)
        hwpt.devices.remove(idev)
        hwpt.users -= 1
        if detach:
            idev.hwpt = None
        # iommufd_object_put_and_try_destroy
        if isinstance(hwpt, HwptPaging) and hwpt.auto_domain and not hwpt.devices:
            self.try_remove(hwpt, "iommufd_hw_pagetable_put")

    def unbind(self, idev: Device) -> None:
        """``iommufd_device_unbind``, after the driver's detach."""
        self.detach(idev)
        self.destroy_user(idev)

    # -- accesses ----------------------------------------------------------------------
    def access_create(self, on_unmap: Any, needs_pin: bool) -> Access:
        """``iommufd_access_create``: published at once; the driver is a user until
        :meth:`access_destroy` and the access holds the context."""
        id = self.object_alloc("iommufd_access")
        access = Access(iova_alignment=PAGE_SIZE if needs_pin else 1, on_unmap=on_unmap)
        access.users += 1
        self.ctx_get()
        self.add(access, id)
        return access

    def access_destroy(self, access: Access) -> None:
        """``iommufd_access_destroy``."""
        self.destroy_user(access)

    def access_attach(self, access: Access, ioas_id: int) -> None:
        """``iommufd_access_attach``: ENOENT for no such IOAS."""
        assert access.ioas is None
        self.access_change_ioas(access, self.get(ioas_id, Ioas))

    def access_replace(self, access: Access, ioas_id: int) -> None:
        """``iommufd_access_replace``: ENOENT for a detached access or no such IOAS."""
        if access.ioas is None:
            raise NoEntry("access replace: the access is not attached")
        self.access_change_ioas(access, self.get(ioas_id, Ioas))

    def access_change_ioas(self, access: Access, new: Ioas | None) -> None:
        """``iommufd_access_change_ioas``: join ``new`` first (its alignment check can
        fail, leaving the access where it was), then have the driver unpin everything
        (``ops->unmap`` of the whole space) and leave the old IOAS. The same IOAS is a
        no-op."""
        cur = access.ioas
        if cur is new:
            return
        if new is not None:
            new.iopt.add_access(access)
            new.users += 1
        if cur is not None:
            access.ioas = None  # blocks new pins while the driver unpins
            access.notify_unmap(0, ULONG_MAX)
            cur.iopt.remove_access(access)
            cur.users -= 1
        access.ioas = access.ioas_unpin = new

    def access_pin(self, access: Access, iova: int, length: int, write: bool
                   ) -> np.ndarray:
        """``iommufd_access_pin_pages``: the PFNs of ``[iova, +length)``, pinned area by
        area; an error at an area or a gap after the areas unpins what was pinned."""
        last = iova + length - 1
        done: list[tuple[IoptArea, int, int]] = []
        out = []
        try:
            for area in self._access_areas(access, iova, length, write, pin=True):
                lo, hi = max(iova, area.iova), min(last, area.last)
                first, last_index = area.iova_to_index(lo), area.iova_to_index(hi)
                assert area.pages is not None
                out.append(area.pages.add_access(first, last_index))
                area.num_accesses += 1
                done.append((area, first, last_index))
        except KernelError:
            for area, first, last_index in done:
                assert area.pages is not None
                area.pages.remove_access(first, last_index)
                area.num_accesses -= 1
            raise
        return np.concatenate(out)

    def access_unpin(self, access: Access, iova: int, length: int) -> None:
        """``iommufd_access_unpin_pages``: exactly a range that was pinned."""
        ioas = access.ioas_unpin
        assert ioas is not None
        last = iova + length - 1
        for area in ioas.iopt.contig_areas(iova, last):
            lo, hi = max(iova, area.iova), min(last, area.last)
            assert area.pages is not None
            area.pages.remove_access(area.iova_to_index(lo), area.iova_to_index(hi))
            area.num_accesses -= 1

    def _access_areas(self, access: Access, iova: int, length: int, write: bool,
                      pin: bool) -> Iterator[IoptArea]:
        """The walk ``iommufd_access_pin_pages`` and ``_rw`` share: EINVAL for a length of
        0, EOVERFLOW for a range that wraps, ENOENT when detached; then each contiguous
        area in turn, checked when it is reached (EINVAL while being unmapped or, for a
        pin, not page aligned at its ends; EPERM for its protection) and handed to the
        caller; ENOENT after the last one if they do not reach the end (a gap)."""
        if not length:
            raise InvalidArgument("access: length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise Overflow(f"access: [{iova:#x}, +{length:#x}) wraps")
        if access.ioas is None:
            raise NoEntry("access: not attached to an IOAS")
        areas, covered = access.ioas.iopt.contig_run(iova, last)
        for area in areas:
            if area.prevent_access:
                raise InvalidArgument(f"access: area {area.iova:#x} is being unmapped")
            if pin:  # iopt_area_contig_is_aligned
                cur = max(iova, area.iova)
                if area.start_byte_of(cur) % PAGE_SIZE or (
                        area.last < last and
                        area.start_byte_of(area.last) % PAGE_SIZE != PAGE_SIZE - 1):
                    raise InvalidArgument(f"access: area {area.iova:#x} is not page aligned")
            need = Prot.WRITE if write else Prot.READ
            if not area.prot & need:
                raise NotPermitted(f"access: area {area.iova:#x} does not allow "
                                   f"{'writes' if write else 'reads'}")
            yield area
        if not covered:
            raise NoEntry(f"access: [{iova:#x}, {last:#x}] is not covered by contiguous "
                          "areas")

    def access_rw(self, access: Access, iova: int, data: bytearray, write: bool, *,
                  mm: MmStruct | None = None, slow: bool = False) -> None:
        """``iommufd_access_rw``: copy between ``data`` and ``[iova, +len(data))`` area by
        area (what went before a failing area or a gap stays copied). ``mm`` is the
        caller's: ``iopt_pages_rw_access`` copies to or from the user's address itself
        when the pages are the caller's own user memory (``copy_to_user``, EFAULT), pins
        that one page of the owner's address space when another process asks for a
        single page (``iopt_pages_rw_page``), and otherwise reads the PFNs the IOAS holds
        (``iopt_pages_rw_slow``; always with ``slow``, the selftest's
        MOCK_ACCESS_RW_SLOW_PATH)."""
        last = iova + len(data) - 1
        done = 0
        for area in self._access_areas(access, iova, len(data), write, pin=False):
            lo, hi = max(iova, area.iova), min(last, area.last)
            pages = area.pages
            assert pages is not None
            if write and not pages.writable:
                raise NotPermitted(f"access: pages of area {area.iova:#x} are read only")
            chunk = memoryview(data)[done:done + hi - lo + 1]
            self._rw_pages(pages, area.start_byte_of(lo), chunk, write, mm, slow)
            done += hi - lo + 1

    def _rw_pages(self, pages: IoptPages, byte0: int, chunk: memoryview, write: bool,
                  mm: MmStruct | None, slow: bool) -> None:
        """``iopt_pages_rw_access`` for ``len(chunk)`` bytes from byte ``byte0``."""
        src = pages.source
        first, last_index = byte0 // PAGE_SIZE, (byte0 + len(chunk) - 1) // PAGE_SIZE
        if isinstance(src, UserSource) and mm is not None:
            change_mm = slow or src.mm is not mm
            if not change_mm:  # copy_to_user / copy_from_user at the user's address
                _copy_user(src.mm, src.uptr + byte0, chunk, write)
                return
            if first == last_index and not src.mm.gone:  # iopt_pages_rw_page
                if self.mem.fail_nth.iommufd_should_fail("iopt_pages_rw_page"):
                    raise InvalidArgument("iopt_pages_rw_page: injected failure")
                page = src.uptr + first * PAGE_SIZE
                pfns = src.mm.pin_user_pages(page, 1, write)
                try:
                    self._copy_pfns(pfns, first, byte0, chunk, write)
                finally:
                    src.mm.unpin_user_pages(pfns)
                return
        pfns, fresh = pages.read(first, last_index)  # iopt_pages_rw_slow
        try:
            self._copy_pfns(pfns, first, byte0, chunk, write)
        finally:
            pages.release(pfns, fresh)

    def _copy_pfns(self, pfns: np.ndarray, first: int, byte0: int, chunk: memoryview,
                   write: bool) -> None:
        """Copy between ``chunk`` and the bytes from ``byte0`` of pages ``first..`` held
        at ``pfns``, one copy per run of contiguous pages."""
        end_byte = byte0 + len(chunk)
        index, done = first, 0
        for pfn, count in pfn_runs(pfns):
            start = max(byte0, index * PAGE_SIZE)
            stop = min(end_byte, (index + count) * PAGE_SIZE)
            pa = pfn * PAGE_SIZE + start - index * PAGE_SIZE
            if write:
                self.mem.write(pa, chunk[done:done + stop - start])
            else:
                chunk[done:done + stop - start] = self.mem.read(pa, stop - start)
            done += stop - start
            index += count


def _copy_user(mm: MmStruct, addr: int, chunk: memoryview, write: bool) -> None:
    """``copy_to_user`` / ``copy_from_user`` at ``addr`` of ``mm`` (EFAULT)."""
    if write:
        mm.write(addr, chunk)
    else:
        chunk[:] = mm.read(addr, len(chunk))


def _hwpt_paging_flags(kernel: KernelVersion) -> int:
    """``valid_flags`` of ``iommufd_hwpt_paging_alloc``: 6.12 knows NEST_PARENT and
    DIRTY_TRACKING; by 7.0 FAULT_ID_VALID and PASID are valid too."""
    flags = _NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING
    if kernel >= LINUX_7_0:
        flags |= _FAULT_ID_VALID | _PASID
    return flags


def _master(dev: DmaDevice) -> Any:
    assert dev.dev_iommu is not None, f"{dev.name} has no IOMMU"
    return dev.dev_iommu.priv
