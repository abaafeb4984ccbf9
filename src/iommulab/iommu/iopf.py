"""I/O page faults: the core's side of a device's page requests (drivers/iommu/io-pgfault.c,
6.12).

A driver reports each page request with :func:`report_device_fault`; requests that are
not the last of their group wait on the device's ``partial`` list, and the last one
makes an :class:`IopfGroup` of them all that goes to the handler of the domain attached
for the request (:class:`AttachHandle`: iommufd's fault queue). The handler answers the
group later with :func:`iopf_group_response`, which the driver's ``page_response``
carries to the device. A device can report faults while its IOPF is enabled
(:func:`iopf_queue_add_device`, the driver's ``dev_enable_feat``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Busy, NoDevice
from ..mem.fault import FailNth

__all__ = [
    "IOMMU_DEV_FEAT_IOPF",
    "IOMMU_FAULT_PAGE_REQ",
    "IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE",
    "IOMMU_FAULT_PAGE_REQUEST_PASID_VALID",
    "IOMMU_NO_PASID",
    "IOMMU_PAGE_RESP_FAILURE",
    "IOMMU_PAGE_RESP_INVALID",
    "IOMMU_PAGE_RESP_SUCCESS",
    "AttachHandle",
    "IommuFaultParam",
    "IommuPageResponse",
    "IopfFault",
    "IopfGroup",
    "iopf_free_group",
    "iopf_group_response",
    "iopf_queue_add_device",
    "iopf_queue_remove_device",
    "report_device_fault",
]

IOMMU_DEV_FEAT_IOPF = 1  # enum iommu_dev_features (SVA is 0)
IOMMU_FAULT_PAGE_REQ = 1  # enum iommu_fault_type
IOMMU_FAULT_PAGE_REQUEST_PASID_VALID = 1 << 0
IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE = 1 << 1
IOMMU_PAGE_RESP_SUCCESS, IOMMU_PAGE_RESP_INVALID, IOMMU_PAGE_RESP_FAILURE = 0, 1, 2
IOMMU_NO_PASID = 0


@dataclass(frozen=True)
class IopfFault:
    """``struct iommu_fault_page_request`` of an ``IOMMU_FAULT_PAGE_REQ`` fault (``prm``):
    flags (IOMMU_FAULT_PAGE_REQUEST_*), pasid, grpid, perm (IOMMU_FAULT_PERM_*), addr."""

    flags: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    type: int = IOMMU_FAULT_PAGE_REQ


@dataclass(frozen=True)
class IommuPageResponse:
    """``struct iommu_page_response`` as the driver's ``page_response`` gets it."""

    pasid: int
    grpid: int
    code: int


@dataclass(eq=False)
class AttachHandle:
    """``struct iommu_attach_handle`` (iommufd's ``struct iommufd_attach_handle``): what
    a group's attachment at a PASID holds: the attached domain (whose ``iopf_handler``
    takes the faults) and the iommufd device that attached it."""

    domain: Any
    idev: Any = None


@dataclass(eq=False)
class IommuFaultParam:
    """``struct iommu_fault_param`` of a device with IOPF enabled: the requests waiting
    for the last of their group (``partial``) and the groups handed out and not
    answered (``faults``, the pending list)."""

    dev: Any  # the DmaDevice
    driver: Any
    master: Any  # the driver's per-device structure, what ``page_response`` is given
    partial: list[IopfFault] = field(default_factory=list)
    faults: list[IopfGroup] = field(default_factory=list)


@dataclass(eq=False)
class IopfGroup:
    """``struct iopf_group``: the faults of one page request group, the last one last
    (``last_fault``); ``cookie`` is what iommufd's fault queue names it by (0: none)."""

    faults: list[IopfFault]
    fault_param: IommuFaultParam
    attach_handle: AttachHandle
    cookie: int = 0

    @property
    def last_fault(self) -> IopfFault:
        return self.faults[-1]

    @property
    def fault_count(self) -> int:
        return len(self.faults)


def iopf_queue_add_device(dev_iommu: Any, dev: Any, driver: Any, fail: FailNth) -> None:
    """``iopf_queue_add_device``: ENODEV for a driver without ``page_response``, EBUSY
    when the device already has its fault parameter, then the parameter (``kzalloc``,
    ENOMEM). ``dev_iommu`` is the device's ``struct dev_iommu``."""
    if not hasattr(driver, "page_response"):
        raise NoDevice("iopf_queue_add_device: the driver has no page_response")
    if getattr(dev_iommu, "fault_param", None) is not None:
        raise Busy(f"iopf_queue_add_device: {dev.name} already reports faults")
    fail.check("kzalloc(iommu_fault_param)")
    dev_iommu.fault_param = IommuFaultParam(dev, driver, dev_iommu.priv)


def iopf_queue_remove_device(dev_iommu: Any) -> None:
    """``iopf_queue_remove_device``: the partial requests dropped, every group still on
    the pending list answered INVALID, the parameter gone. O(pending)."""
    param: IommuFaultParam | None = getattr(dev_iommu, "fault_param", None)
    if param is None:
        return
    param.partial.clear()
    for group in list(param.faults):
        last = group.last_fault
        param.driver.page_response(param.master, last, IommuPageResponse(
            last.pasid, last.grpid, IOMMU_PAGE_RESP_INVALID))
        param.faults.remove(group)
    dev_iommu.fault_param = None


def report_device_fault(dev: Any, fault: IopfFault, handle_get: Callable[[int, int], Any],
                        fail: FailNth) -> bool:
    """``iommu_report_device_fault``: whether the fault reached a handler.

    ``handle_get(pasid, type)`` is ``iommu_attach_handle_get`` on the device's group (the
    handle or None; a ``type`` the domain is not also gives None). A fault with a PASID
    goes to that PASID's attachment, or, for a driver with ``user_pasid_table``, to a
    NESTED domain attached without one. No handle, or a domain with no ``iopf_handler``,
    or IOPF not enabled (a kernel WARN): the driver answers the request INVALID, and
    False. A request that is not its group's last waits in ``partial`` (``kzalloc``: a
    failure drops it, and the caller gets False). The last one makes the group (the
    requests of its ``grpid`` first, then itself; ``kzalloc``: when it fails the
    request is answered FAILURE) and hands it to the handler. O(partial)."""
    dev_iommu = dev.dev_iommu
    driver = dev_iommu.driver
    handle = None
    if fault.flags & IOMMU_FAULT_PAGE_REQUEST_PASID_VALID:
        handle = handle_get(fault.pasid, 0)
        if handle is None and getattr(driver, "user_pasid_table", False):
            from .domain import DomainType
            handle = handle_get(IOMMU_NO_PASID, DomainType.NESTED)
    else:
        handle = handle_get(IOMMU_NO_PASID, 0)
    param: IommuFaultParam | None = getattr(dev_iommu, "fault_param", None)
    handler = handle.domain.iopf_handler if handle is not None else None
    if handler is None or param is None:
        if fault.type == IOMMU_FAULT_PAGE_REQ:  # iopf_error_response
            driver.page_response(dev_iommu.priv, fault, IommuPageResponse(
                fault.pasid, fault.grpid, IOMMU_PAGE_RESP_INVALID))
        return False
    if not fault.flags & IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE:  # report_partial_fault
        if fail.fails("kzalloc(iopf_fault)"):
            return False
        param.partial.insert(0, fault)  # list_add: at the head
        return True
    if fail.fails("kzalloc(iopf_group)"):  # the abort group: answered FAILURE at once
        mine = [f for f in param.partial if f.grpid == fault.grpid]
        param.partial = [f for f in param.partial if f.grpid != fault.grpid]
        del mine  # __iopf_free_group frees the partial requests it took
        driver.page_response(dev_iommu.priv, fault, IommuPageResponse(
            fault.pasid, fault.grpid, IOMMU_PAGE_RESP_FAILURE))
        return True
    # iopf_group_alloc: each partial of the group list_move'd to the head, before the last
    faults: list[IopfFault] = []
    for f in param.partial:
        if f.grpid == fault.grpid:
            faults.insert(0, f)
    param.partial = [f for f in param.partial if f.grpid != fault.grpid]
    group = IopfGroup([*faults, fault], param, handle)
    param.faults.append(group)
    handler(group)  # iommufd's handler never fails
    return True


def iopf_group_response(group: IopfGroup, code: int) -> None:
    """``iopf_group_response``: the driver's ``page_response`` for the group's last
    request, with ``code``; the group leaves the pending list (if still on it)."""
    param = group.fault_param
    last = group.last_fault
    param.driver.page_response(param.master, last,
                               IommuPageResponse(last.pasid, last.grpid, code))
    if group in param.faults:
        param.faults.remove(group)


def iopf_group_dequeue(group: IopfGroup) -> None:
    """``iopf_group_dequeue``: off the pending list; the handler answers it later."""
    if group in group.fault_param.faults:
        group.fault_param.faults.remove(group)


def iopf_free_group(group: IopfGroup) -> None:
    """``iopf_free_group``: nothing the model keeps (the requests and the group are
    Python objects; the fault parameter's reference is not counted)."""
