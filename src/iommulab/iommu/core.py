"""Devices, groups and default domains: the part of drivers/iommu/iommu.c around them.

``IommuCore.probe_device`` is ``__iommu_probe_device``: the driver probes the
device, the device joins a group, the group gets its default domain (DMA, or
DMA_FQ when lazy) with direct mappings for the firmware's DIRECT regions,
and the device's DMA goes through dma-iommu from then on
(``iommu_setup_dma_ops``). ``set_group_domain`` is ``__iommu_group_set_domain``
with the ``require_direct`` rule. DMA ownership decides which core domain a group
sits on: a group nobody owns is on its default domain; VFIO and iommufd claim it
(``iommu_group_claim_dma_owner``, ``iommu_device_claim_dma_owner``), which moves
it to the blocking domain, user domains come and go over that (``attach_group``,
``detach_group``), and the last release puts the default domain back. Linux 6.12
and 7.0 (the driver's ``kernel``) differ in the direct mappings (6.12 probes IOVA
0 as is and flushes the IOTLB after mapping) and in which devices a failed group
attach moves back; their ownership rules are the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..errors import Busy, InvalidArgument, KernelError, NoDevice, NotPermitted
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from .domain import DomainType, IommuDomain
from .resv import IommuCap, ResvRegion, ResvType, merge_resv_regions

if TYPE_CHECKING:
    from ..devices import DmaDevice

__all__ = ["DevIommu", "IommuCore", "IommuDriver", "IommuGroup"]


class IommuDriver(Protocol):
    """What the core calls on an IOMMU driver (a subset of ``struct iommu_ops``)."""

    blocked_domain: IommuDomain
    identity_domain: IommuDomain
    default_domain: IommuDomain | None  # iommu_ops.default_domain: a static one, or None

    def probe_device(self, sids: int) -> Any: ...
    def release_device(self, master: Any) -> None: ...
    def get_resv_regions(self, master: Any) -> list[ResvRegion]: ...
    def domain_alloc_paging(self, master: Any, type: DomainType = ...) -> Any: ...
    def attach_dev(self, domain: IommuDomain, master: Any) -> None: ...
    def capable(self, master: Any, cap: IommuCap) -> bool: ...


@dataclass
class DevIommu:
    """``struct dev_iommu``: the driver's handle and the core's per-device flags."""

    driver: IommuDriver
    priv: Any  # the driver's per-device structure (e.g. ArmSmmuMaster)
    require_direct: bool = False
    pci_32bit_workaround: bool = False
    shadow_on_flush: bool = False
    fault_param: Any = None  # iommu/iopf.py's IommuFaultParam while IOPF is enabled


class IommuGroup:
    """``struct iommu_group``: devices that share one IOMMU context.

    ``owner_cnt`` counts the DMA owners: the drivers using the default domain through
    the DMA API (``owner`` None), or the claims of one user owner (``owner``: the VFIO
    group or iommufd context that claimed the group, compared by identity).
    ``blocking_domain`` is allocated by the first claim and kept until the group goes.
    """

    def __init__(self, core: IommuCore, id: int) -> None:
        self.core = core
        self.id = id
        self.devices: list[DmaDevice] = []
        self.default_domain: IommuDomain | None = None
        self.domain: IommuDomain | None = None
        self.blocking_domain: IommuDomain | None = None
        self.owner: object | None = None
        self.owner_cnt = 0

    def _check(self) -> None:
        """Invariants (tests only, O(devices)): a user owner is counted and has a
        blocking domain; a group a user owns is never on its default domain (unless
        that is the blocking one, as the mock's is); every device is probed into it."""
        assert self.owner_cnt >= 0
        if self.owner is not None:
            assert self.owner_cnt >= 1 and self.blocking_domain is not None
            assert (self.domain is not self.default_domain
                    or self.default_domain is self.blocking_domain)
        if self.devices:
            assert self.default_domain is not None and self.domain is not None
        for dev in self.devices:
            assert dev.group is self and dev.dev_iommu is not None

    def __repr__(self) -> str:
        return f"<IommuGroup {self.id} {[d.name for d in self.devices]}>"

    def resv_regions(self) -> list[ResvRegion]:
        """``iommu_get_group_resv_regions``: every device's regions, each copied into the
        group's list (``iommu_insert_resv_region``: ENOMEM when a copy cannot be had),
        merged per type."""
        per_device = []
        for d in self.devices:
            regions = self.core.get_resv_regions(d)
            for _ in regions:
                d.mem.fail_nth.check("iommu_insert_resv_region: iommu_alloc_resv_region")
            per_device.append(regions)
        return merge_resv_regions(per_device)

    def sysfs_reserved_regions(self) -> str:
        """``/sys/kernel/iommu_groups/N/reserved_regions``."""
        names = {ResvType.DIRECT: "direct", ResvType.DIRECT_RELAXABLE: "direct-relaxable",
                 ResvType.RESERVED: "reserved", ResvType.MSI: "msi", ResvType.SW_MSI: "msi"}
        return "".join(f"0x{r.start:016x} 0x{r.last:016x} {names[r.type]}\n"
                       for r in self.resv_regions())


class IommuCore:
    """One machine's IOMMU subsystem over ``driver``.

    ``strict`` is ``iommu.strict=`` (Arm kernels default to strict, x86 to
    lazy); ``forcedac`` is ``iommu.forcedac=``; ``ncpus`` CPUs own per-CPU
    IOVA caches and flush queues; timers run on ``clock``.
    """

    def __init__(self, driver: IommuDriver, *, clock: Clock | None = None, ncpus: int = 1,
                 strict: bool = True, forcedac: bool = False) -> None:
        self.driver = driver
        self.clock = clock if clock is not None else Clock()
        self.ncpus = ncpus
        self.strict = strict
        self.forcedac = forcedac
        self.groups: dict[int, IommuGroup] = {}
        self.log: list[str] = []  # pr_warn()/dev_warn() lines
        #: The release the core follows: the driver's.
        self.kernel: KernelVersion = getattr(driver, "kernel", DEFAULT_KERNEL)

    def get_resv_regions(self, dev: DmaDevice) -> list[ResvRegion]:
        """``iommu_get_resv_regions``: the driver's regions, then the firmware's for ``dev``."""
        assert dev.dev_iommu is not None
        return [*self.driver.get_resv_regions(dev.dev_iommu.priv), *dev.firmware_resv]

    # -- probe / release ------------------------------------------------------------------------
    def probe_device(self, dev: DmaDevice, group: IommuGroup | None = None) -> IommuGroup:
        """``__iommu_probe_device``: probe (its ``dev_iommu``), join ``group`` (or a new
        one: ``iommu_group`` and ``group_device`` allocated), default domain.

        The first device of a group allocates its default domain (DMA_FQ
        unless ``strict``) and a DMA cookie, or takes the driver's static
        ``default_domain`` (the iommufd mock's blocking domain), maps its
        direct regions and attaches (``iommu_setup_default_domain``: mappings
        that fail before the attach are tried again after it, and then fail the
        probe); the others get their direct mappings, whose errors the kernel
        ignores, then attach to the group's domain. On failure the device is
        released again and the error raised.
        """
        from ..dma.cookie import DmaCookie
        from ..dma.iommu_dma import init_domain

        if dev.dev_iommu is not None:
            raise InvalidArgument(f"{dev.name} is already probed (group "
                                  f"{dev.group.id if dev.group else '?'})")
        fail = dev.mem.fail_nth
        fail.check("kzalloc(dev_iommu)")  # dev_iommu_get
        master = self.driver.probe_device(dev.sid)
        new_group = group is None
        try:
            if new_group:
                fail.check("kzalloc(iommu_group)")  # the driver's device_group
            fail.check("kzalloc(group_device)")  # iommu_group_alloc_device
        except KernelError:
            self.driver.release_device(master)
            raise
        dev.dev_iommu = DevIommu(self.driver, master)
        if group is None:
            group = IommuGroup(self, next(i for i in range(len(self.groups) + 1)
                                          if i not in self.groups))
            self.groups[group.id] = group
        group.devices.append(dev)
        dev.group = group
        try:
            if group.default_domain is None and self.driver.default_domain is not None:
                self._setup_default_domain(group, self.driver.default_domain)
            elif group.default_domain is None:
                dtype = DomainType.DMA if self.strict else DomainType.DMA_FQ
                domain = self.driver.domain_alloc_paging(master, dtype)
                domain.cookie = DmaCookie(self.clock)  # iommu_get_dma_cookie
                try:
                    self._setup_default_domain(group, domain)
                except KernelError:
                    domain.cookie = None
                    domain.free()
                    raise
            else:
                assert group.domain is not None
                with contextlib.suppress(KernelError):  # __iommu_probe_device ignores it
                    self.create_direct_mappings(group.default_domain, dev)
                self._set_device_domain(group, dev, group.domain)
            assert group.default_domain is not None
            if dev.is_pci:  # iommu_setup_dma_ops
                dev.dev_iommu.pci_32bit_workaround = not self.forcedac
            dev.dma_iommu = bool(group.default_domain.type & DomainType.DMA
                                 & ~DomainType.UNMANAGED)
            if dev.dma_iommu:
                init_domain(group.default_domain, dev, self)
        except KernelError:
            dev.dma_iommu = False
            self.release_device(dev)
            if new_group and not group.devices:
                self.groups.pop(group.id, None)
            raise
        return group

    def _setup_default_domain(self, group: IommuGroup, domain: IommuDomain) -> None:
        """``iommu_setup_default_domain`` for a new group: direct mappings before the
        attach, then again after it for whatever failed before (now an error)."""
        direct_failed = False
        for dev in group.devices:
            try:
                self.create_direct_mappings(domain, dev)
            except KernelError:
                direct_failed = True
        if direct_failed:
            self.log.append("IOMMU driver was not able to establish FW requested direct "
                            "mapping.")
        group.default_domain = domain
        try:
            self.set_group_domain(group, domain)
            if direct_failed:
                for dev in group.devices:
                    self.create_direct_mappings(domain, dev)
        except KernelError:
            group.default_domain = None
            raise

    def release_device(self, dev: DmaDevice) -> None:
        """``iommu_release_device``: block the device, leave the group; the last one out
        frees the default domain (its cookie, IOVAs and MSI pages with it)."""
        from ..dma.cookie import DmaCookie

        dev_iommu, group = dev.dev_iommu, dev.group
        if dev_iommu is None:
            return
        self.driver.release_device(dev_iommu.priv)
        if group is not None and dev in group.devices:
            group.devices.remove(dev)
            if not group.devices:
                domain = group.default_domain
                if domain is not None and domain is not self.driver.default_domain:
                    cookie = domain.cookie
                    if isinstance(cookie, DmaCookie):
                        cookie.free_fq()
                        if cookie.iovad is not None:
                            cookie.iovad.put()
                    domain.cookie = None
                    domain.free()
                group.default_domain = group.domain = group.blocking_domain = None
                self.groups.pop(group.id, None)
        dev.dev_iommu = None
        dev.group = None
        dev.dma_iommu = False

    # -- domains ----------------------------------------------------------------------------------
    def _set_device_domain(self, group: IommuGroup, dev: DmaDevice, domain: IommuDomain,
                           must_succeed: bool = False) -> None:
        """``__iommu_device_set_domain``: EINVAL when firmware needs 1:1 and ``domain``
        blocks; if the driver refuses a domain that must succeed, the device goes to
        the group's blocking domain (if it has one) before the error is raised."""
        assert dev.dev_iommu is not None
        if dev.dev_iommu.require_direct and (domain.type == DomainType.BLOCKED
                                             or domain is group.blocking_domain):
            msg = (f"{dev.name}: Firmware has requested this device have a 1:1 IOMMU "
                   "mapping, rejecting configuring the device without a 1:1 mapping. "
                   "Contact your platform vendor.")
            self.log.append(msg)
            raise InvalidArgument(msg)
        try:
            self.driver.attach_dev(domain, dev.dev_iommu.priv)
        except KernelError:
            blocking = group.blocking_domain
            if must_succeed and blocking is not None and blocking is not domain:
                with contextlib.suppress(KernelError):
                    self.driver.attach_dev(blocking, dev.dev_iommu.priv)
            raise

    def set_group_domain(self, group: IommuGroup, domain: IommuDomain, *,
                         must_succeed: bool = False) -> None:
        """``__iommu_group_set_domain_internal``: nothing if the group is on ``domain``
        already; else every device to ``domain``. On failure the ones already moved go
        back to the old domain (if there was one), as ``err_revert`` does, and in 6.12
        the one that failed too (7.0: "No need to revert the last gdev that failed to
        set domain"). With ``must_succeed`` (``__iommu_group_set_domain_nofail``) a
        refusal does not stop the others and the group is on ``domain`` whatever
        happened: the kernel's WARN_ON, logged. O(devices)."""
        old = group.domain
        if old is domain:  # "if (group->domain == new_domain) return 0;"
            return
        tried: list[DmaDevice] = []
        failed: list[str] = []
        for dev in group.devices:
            tried.append(dev)
            try:
                # the failures of a nofail path are the caller's
                with dev.mem.fail_nth.within("__iommu_group_set_domain_nofail") \
                        if must_succeed else contextlib.nullcontext():
                    self._set_device_domain(group, dev, domain, must_succeed)
            except KernelError as err:
                if not must_succeed:
                    self._revert_group_domain(group, tried, err)
                    raise
                failed.append(f"{dev.name}: {err.strerror}")
        if failed:
            self.log.append(f"WARNING: group {group.id} could not be set to {domain!r}: "
                            + "; ".join(failed))
        group.domain = domain

    def _revert_group_domain(self, group: IommuGroup, tried: list[DmaDevice],
                             err: KernelError) -> None:
        """``err_revert``: the devices tried go back to ``group.domain`` as a domain that
        must succeed (a refusal is the kernel's WARN_ON, logged)."""
        old = group.domain
        if old is None:  # first probe: release cleans up
            return
        for dev in tried if self.kernel < LINUX_7_0 else tried[:-1]:
            try:
                self._set_device_domain(group, dev, old, must_succeed=True)
            except KernelError as again:
                self.log.append(f"WARNING: {dev.name}: reverting to {old!r} after "
                                f"{err.strerror} failed too: {again.strerror}")

    def _set_core_domain(self, group: IommuGroup) -> None:
        """``__iommu_group_set_core_domain``: the blocking domain while a user owns the
        group, the default domain otherwise; it must succeed."""
        core_domain = group.blocking_domain if group.owner is not None else group.default_domain
        assert core_domain is not None
        self.set_group_domain(group, core_domain, must_succeed=True)

    def attach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """``iommu_attach_group`` (``__iommu_attach_group``): EBUSY while the group is on
        a domain other than its default or blocking one (some user domain is attached
        already: detach or replace it first); then every device to ``domain``."""
        if group.domain is not None and group.domain is not group.default_domain and \
                group.domain is not group.blocking_domain:
            raise Busy(f"attach: group {group.id} is attached to {group.domain!r}, not to a "
                       "core domain")
        self.set_group_domain(group, domain)

    def detach_group(self, group: IommuGroup) -> None:
        """``iommu_detach_group``: back to the core domain, the blocking one while the
        group is owned (so a detached group owned by VFIO or iommufd does no DMA)."""
        self._set_core_domain(group)

    # -- DMA ownership ----------------------------------------------------------------------------
    def device_use_default_domain(self, dev: DmaDevice) -> None:
        """``iommu_device_use_default_domain``, from a kernel driver's probe (a driver
        without ``driver_managed_dma``): one more owner of the group's default domain;
        EBUSY while a user owns the group or it is not on its default domain. (The
        kernel's EPROBE_DEFER for a group without a default domain cannot happen here:
        a probed device's group has one.)"""
        group = dev.group
        if group is None:
            return
        if group.owner_cnt and (group.domain is not group.default_domain
                                or group.owner is not None):
            raise Busy(f"{dev.name}: group {group.id} is owned for user DMA")
        group.owner_cnt += 1

    def device_unuse_default_domain(self, dev: DmaDevice) -> None:
        """``iommu_device_unuse_default_domain``: the kernel driver is unbound."""
        group = dev.group
        if group is None:
            return
        if not group.owner_cnt:  # the kernel's WARN_ON
            self.log.append(f"WARNING: {dev.name}: unuse_default_domain without a user")
            return
        group.owner_cnt -= 1

    def _take_dma_ownership(self, group: IommuGroup, owner: object) -> None:
        """``__iommu_take_dma_ownership``: EBUSY while a domain other than the default
        one is attached; the blocking domain (the driver's static one, as both 6.12's
        ``__iommu_domain_alloc`` and 7.0 take ``ops->blocked_domain``) goes on the
        group, which can fail (EINVAL for a device that needs its 1:1 mappings); then
        ``owner`` holds it. (The kernel's other EBUSY, a PASID attached, needs a user
        domain attached, which needs an owner: the model's PASID 0 is that attach.)"""
        if group.domain is not None and group.domain is not group.default_domain:
            raise Busy(f"claim: group {group.id} is attached to {group.domain!r}, not to "
                       "its default domain")
        if group.blocking_domain is None:  # __iommu_group_alloc_blocking_domain
            group.blocking_domain = self.driver.blocked_domain
        self.set_group_domain(group, group.blocking_domain)
        group.owner = owner
        group.owner_cnt += 1

    def group_claim_dma_owner(self, group: IommuGroup, owner: object) -> None:
        """``iommu_group_claim_dma_owner`` (VFIO's container path, the whole group for
        one owner): EPERM while anyone owns the group, a kernel driver included; then
        :meth:`_take_dma_ownership`. O(devices)."""
        if group.owner_cnt:
            raise NotPermitted(f"claim: group {group.id} already has {group.owner_cnt} "
                               "DMA owner(s)")
        self._take_dma_ownership(group, owner)

    def device_claim_dma_owner(self, dev: DmaDevice, owner: object) -> None:
        """``iommu_device_claim_dma_owner`` (iommufd's bind): ENODEV without a group;
        devices of one group may all claim it for the same ``owner`` (counted), any
        other owner, a kernel driver included, is EPERM; the first claim takes it."""
        group = dev.group
        if group is None:
            raise NoDevice(f"claim: {dev.name} has no IOMMU group")
        if group.owner_cnt:
            if group.owner is not owner:
                raise NotPermitted(f"claim: group {group.id} of {dev.name} is owned by "
                                   "another user or a kernel driver")
            group.owner_cnt += 1
            return
        self._take_dma_ownership(group, owner)

    def _release_dma_ownership(self, group: IommuGroup) -> None:
        """``__iommu_release_dma_ownership``: unowned, back on the default domain (which
        must succeed). A release of a group no user owns is the kernel's WARN_ON: logged,
        nothing changes."""
        if not group.owner_cnt or group.owner is None:
            self.log.append(f"WARNING: release of group {group.id}, which no user owns")
            return
        group.owner_cnt = 0
        group.owner = None
        assert group.default_domain is not None
        self.set_group_domain(group, group.default_domain, must_succeed=True)

    def group_release_dma_owner(self, group: IommuGroup) -> None:
        """``iommu_group_release_dma_owner``: undo :meth:`group_claim_dma_owner`."""
        self._release_dma_ownership(group)

    def device_release_dma_owner(self, dev: DmaDevice) -> None:
        """``iommu_device_release_dma_owner``: one claim fewer; the last one releases."""
        group = dev.group
        assert group is not None, f"{dev.name} released without a group"
        if group.owner_cnt > 1:
            group.owner_cnt -= 1
        else:
            self._release_dma_ownership(group)

    def group_dma_owner_claimed(self, group: IommuGroup) -> bool:
        """``iommu_group_dma_owner_claimed``: anyone owns it (a kernel driver too)."""
        return bool(group.owner_cnt)

    def _check(self) -> None:
        """Invariants of every group (tests only)."""
        for id, group in self.groups.items():
            assert group.id == id and group.devices
            group._check()

    def create_direct_mappings(self, domain: IommuDomain, dev: DmaDevice) -> None:
        """``iommu_create_device_direct_mappings``: DIRECT marks ``require_direct``; a DMA
        domain maps DIRECT and DIRECT_RELAXABLE regions 1:1 where nothing is mapped yet.

        Start and end are rounded *up* to the smallest page size, as ALIGN()
        does; runs of unmapped pages go to ``iommu_map`` one run at a time. "Mapped"
        is ``iommu_iova_to_phys() != 0``: 7.0 asks about IOVA 1 for IOVA 0, 6.12 about
        0 itself, so a page mapped 1:1 at 0 looks unmapped and is mapped again
        (EEXIST). 6.12 then flushes the whole IOTLB of a DMA domain if the device has
        any reserved region; 7.0 does not flush.
        """
        assert dev.dev_iommu is not None
        pg_size = domain.pgsize_bitmap & -domain.pgsize_bitmap
        is_dma = bool(domain.type & DomainType.DMA & ~DomainType.UNMANAGED)
        regions = self.get_resv_regions(dev)
        probe_zero = 0 if self.kernel < LINUX_7_0 else 1  # "Offset to address 1 if addr is 0"
        for entry in regions:
            if entry.type == ResvType.DIRECT:
                dev.dev_iommu.require_direct = True
            if entry.type not in (ResvType.DIRECT, ResvType.DIRECT_RELAXABLE) or not is_dma:
                continue
            start = -(-entry.start // pg_size) * pg_size
            end = -(-(entry.start + entry.length) // pg_size) * pg_size
            map_size = 0
            addr = start
            while addr <= end:
                if addr != end and not domain.iova_to_phys(addr or probe_zero):
                    map_size += pg_size
                elif map_size:
                    domain.map(addr - map_size, addr - map_size, map_size, entry.prot)
                    map_size = 0
                addr += pg_size
        if regions and is_dma and self.kernel < LINUX_7_0:
            domain.flush_iotlb_all()
