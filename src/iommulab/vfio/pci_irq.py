"""vfio-pci's interrupts (drivers/vfio/pci/vfio_pci_intrs.c, the IRQ ioctls of
vfio_pci_core.c and ``vfio_set_irqs_validate_and_prepare`` of vfio_main.c).

A vfio-pci device delivers each interrupt of the function by signalling an eventfd the
user gave with VFIO_DEVICE_SET_IRQS: INTx through a handler on the function's line
that masks it (INTx disable, PCI 2.3) until the user unmasks, MSI through a handler on
each vector the host allocated. ERR and REQ triggers are eventfds the user can
signal for loopback tests (the model's functions are conventional PCI, so no ERR).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Busy, InvalidArgument, KernelError, NoDevice, NotATty, kernel_error
from ..eventfd import EPOLLHUP, EPOLLIN, EventFdCtx, eventfd_ctx_fdget
from ..mem.fault import xa_nodes_needed
from ..pcihw import (
    PCI_COMMAND_INTX_DISABLE,
    PCI_INTERRUPT_PIN,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_QMASK,
)
from . import uapi as u

if TYPE_CHECKING:
    from ..pcidev import PciDevice
    from ..syscall.process import Process
    from .files import _Arg
    from .pci_config import VfioPciConfig

__all__ = ["VfioPciIrqs", "get_irq_info", "set_irqs"]

_IRQ_NONE = u.VFIO_PCI_NUM_IRQS  # vdev->irq_type when no interrupt is set up
_U32_MAX = 0xFFFF_FFFF


@dataclass
class _IrqCtx:
    """``struct vfio_pci_irq_ctx``: the trigger, the INTx mask state, the unmask
    virqfd; ``msg`` is an MSI vector's host message data."""

    trigger: EventFdCtx | None
    masked: bool = False
    unmask: _Virqfd | None = None
    msg: int = -1


class _Virqfd:
    """``struct virqfd`` (drivers/vfio/virqfd.c): an eventfd whose signal runs
    ``handler`` and, when that returns true, ``thread``; the eventfd's release
    (EPOLLHUP) deactivates it."""

    def __init__(self, ctx: EventFdCtx, handler: Callable[[], bool],
                 thread: Callable[[], None], owner: Callable[[], None]) -> None:
        self.eventfd, self.handler, self.thread, self._deactivate = ctx, handler, thread, owner
        self._injecting = False

    def wake(self, flags: int) -> None:
        """``virqfd_wakeup``: EPOLLIN consumes the count and runs the handler, whose
        true schedules the thread (:meth:`_inject`)."""
        if flags & EPOLLIN:
            self.eventfd.count = 0  # eventfd_ctx_do_read
            if self.handler():
                self._inject()
        if flags & EPOLLHUP:
            self._deactivate()

    def _inject(self) -> None:
        """``schedule_work(&virqfd->inject)``, whose ``virqfd_inject`` runs the thread.
        Lab: the work runs at once, unless it is the running work that woke this
        virqfd (its thread signalled this very eventfd, as when one eventfd is both an
        INTx trigger and its unmask eventfd). The kernel then queues the work again, and
        again for as long as the handler finds the line pending: a kworker loop the
        model does not follow; it drops the wakeup instead."""
        if self._injecting:
            return
        self._injecting = True
        try:
            self.thread()
        finally:
            self._injecting = False


class VfioPciIrqs:
    """The interrupt state of an open vfio-pci device: ``irq_type``, the contexts by
    vector, ``virq_disabled``, ``msi_qmax`` and the ERR/REQ triggers."""

    def __init__(self, dev: PciDevice) -> None:
        self.dev, self.fn = dev, dev.fn
        self.irq_type = _IRQ_NONE
        self.ctx: dict[int, _IrqCtx] = {}
        self.virq_disabled = False
        self.msi_qmax = 0
        self.err_trigger: EventFdCtx | None = None
        self.req_trigger: EventFdCtx | None = None
        self.pci_2_3 = True  # pci_intx_mask_supported: the model's functions have DisINTx
        self.msi_msgs: list[int] = []  # the host message data of each allocated vector
        self.config: VfioPciConfig | None = None
        self._fail = dev.machine.mem.fail_nth

    def _ctx_alloc(self, vector: int) -> None:
        """``vfio_irq_ctx_alloc``'s allocations: the context (kzalloc), then the
        ``vdev->ctx`` xarray's nodes for ``vector`` (``xa_insert``: index 0 alone lives
        in the head), ENOMEM; the caller stores the context."""
        fail = self._fail
        fail.check("kzalloc(vfio_pci_irq_ctx)")
        present = np.array(sorted(self.ctx), dtype=np.int64)
        fail.xa_nodes("vdev->ctx", xa_nodes_needed(present, vector, vector))

    def _check(self) -> None:
        """Invariants (tests only): contexts exist only for the IRQ type in use (INTx:
        vector 0 alone); each MSI context holds a trigger; INTx's handler is attached
        exactly while INTx is the type."""
        if self.irq_type == _IRQ_NONE:
            assert not self.ctx
        if self.irq_type == u.VFIO_PCI_INTX_IRQ_INDEX:
            assert set(self.ctx) == {0}
        if self.irq_type == u.VFIO_PCI_MSI_IRQ_INDEX:
            assert all(c.trigger is not None for c in self.ctx.values())
        assert (self.fn.intx_handler is not None) == (self.irq_type ==
                                                        u.VFIO_PCI_INTX_IRQ_INDEX)

    def held(self) -> list[EventFdCtx]:
        """The eventfd contexts this device holds a reference to."""
        out = [t for c in self.ctx.values() for t in (c.trigger,) if t is not None]
        out += [c.unmask.eventfd for c in self.ctx.values() if c.unmask is not None]
        return out + [t for t in (self.err_trigger, self.req_trigger) if t is not None]

    def irq_count(self, index: int) -> int:
        """``vfio_pci_get_irq_count``: INTx when the virtual pin is set, MSI from the
        capability's multiple message capable field, no MSI-X, no ERR (not PCIe), one
        REQ."""
        if index == u.VFIO_PCI_INTX_IRQ_INDEX:
            assert self.config is not None
            return 1 if self.config.vconfig[PCI_INTERRUPT_PIN] else 0
        if index == u.VFIO_PCI_MSI_IRQ_INDEX:
            cap = self.fn.msi_cap
            if cap:
                return 1 << ((self.fn.cfg_read(cap + PCI_MSI_FLAGS, 2) &
                              PCI_MSI_FLAGS_QMASK) >> 1)
            return 0
        return 1 if index == u.VFIO_PCI_REQ_IRQ_INDEX else 0

    # -- INTx --------------------------------------------------------------------------------
    def _send_intx(self) -> None:
        """``vfio_send_intx_eventfd``."""
        if self.irq_type == u.VFIO_PCI_INTX_IRQ_INDEX and not self.virq_disabled:
            ctx = self.ctx.get(0)
            if ctx is not None and ctx.trigger is not None:
                ctx.trigger.signal()

    def intx_mask(self) -> bool:
        """``__vfio_pci_intx_mask``: True when ``masked`` changed."""
        if self.irq_type != u.VFIO_PCI_INTX_IRQ_INDEX:
            if self.pci_2_3:
                self.fn.intx(False)
            return False
        ctx = self.ctx[0]
        if ctx.masked:
            return False
        self.fn.intx(False)
        ctx.masked = True
        return True

    def _intx_unmask_handler(self) -> bool:
        """``vfio_pci_intx_unmask_handler``: True when the interrupt is still pending
        (so it is sent again and stays masked)."""
        if self.irq_type != u.VFIO_PCI_INTX_IRQ_INDEX:
            if self.pci_2_3:
                self.fn.intx(True)
            return False
        ctx = self.ctx[0]
        pending = False
        if ctx.masked and not self.virq_disabled:
            pending = not self.fn.check_and_mask_intx(False)
            ctx.masked = pending
        return pending

    def intx_unmask(self) -> None:
        """``__vfio_pci_intx_unmask``."""
        if self._intx_unmask_handler():
            self._send_intx()

    def _intx_handler(self) -> None:
        """``vfio_intx_handler`` (PCI 2.3): mask at the device if it is interrupting."""
        ctx = self.ctx[0]
        if not ctx.masked and self.fn.check_and_mask_intx(True):
            ctx.masked = True
            self._send_intx()

    def _intx_enable(self, trigger: EventFdCtx | None) -> None:
        """``vfio_intx_enable``: EINVAL unless no interrupt is set up, ENODEV without a
        line; the name (``kasprintf``) and the context (:meth:`_ctx_alloc`), ENOMEM; the
        initial mask is ``virq_disabled`` (written to DisINTx, which a failed
        ``request_irq`` leaves so); ``request_irq`` (its ``irqaction``, ENOMEM) puts the
        handler on the line (run at once if the line is already asserted, as a
        level-triggered line would)."""
        if self.irq_type != _IRQ_NONE:
            raise InvalidArgument("SET_IRQS: another interrupt type is enabled")
        if not self.fn.ident.interrupt_pin:  # !pdev->irq
            raise NoDevice("SET_IRQS: the function has no INTx line")
        fail = self._fail
        fail.check("kasprintf(vfio-intx name)")
        self._ctx_alloc(0)
        ctx = _IrqCtx(trigger, masked=self.virq_disabled)
        self.fn.intx(not ctx.masked)
        fail.check("kzalloc(irqaction)")  # request_irq; on failure all but DisINTx undone
        self.ctx[0] = ctx
        self.irq_type = u.VFIO_PCI_INTX_IRQ_INDEX
        self.fn.intx_handler = self._intx_handler
        if self.fn.intx_level and not self.fn.command & PCI_COMMAND_INTX_DISABLE:
            self._intx_handler()

    def _intx_disable(self) -> None:
        """``vfio_intx_disable``."""
        ctx = self.ctx.pop(0, None)
        if ctx is not None:
            self._virqfd_disable(ctx)
            self.fn.intx_handler = None
            if ctx.trigger is not None:
                ctx.trigger.put()
        self.irq_type = _IRQ_NONE

    def _virqfd_disable(self, ctx: _IrqCtx) -> None:
        """``vfio_virqfd_disable`` of the unmask virqfd."""
        v = ctx.unmask
        if v is not None:
            ctx.unmask = None
            v.eventfd.waiters.remove(v)
            v.eventfd.put()

    def _set_intx_unmask(self, proc: Process, start: int, count: int, flags: int,
                         data: bytes) -> None:
        """``vfio_pci_set_intx_unmask``."""
        if self.irq_type != u.VFIO_PCI_INTX_IRQ_INDEX or start != 0 or count != 1:
            raise InvalidArgument("SET_IRQS: INTx unmask wants INTx enabled, start 0, count 1")
        if flags & u.VFIO_IRQ_SET_DATA_NONE or (flags & u.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self.intx_unmask()
        elif flags & u.VFIO_IRQ_SET_DATA_EVENTFD:
            ctx = self.ctx[0]
            fd = int.from_bytes(data[:4], "little", signed=True)
            if fd >= 0:
                self._virqfd_enable(proc, ctx, fd)
            else:
                self._virqfd_disable(ctx)

    def _virqfd_enable(self, proc: Process, ctx: _IrqCtx, fd: int) -> None:
        """``vfio_virqfd_enable``: the ``struct virqfd`` (kzalloc, ENOMEM) before the fd
        is looked at; EBADF/EINVAL for a bad fd, EBUSY while one is set; an eventfd that
        already counts runs the handler at once."""
        self._fail.check("kzalloc(virqfd)")
        efd = eventfd_ctx_fdget(proc, fd)
        if ctx.unmask is not None:
            efd.put()
            raise Busy("SET_IRQS: an unmask eventfd is already set")

        def deactivate() -> None:
            if ctx.unmask is v:
                self._virqfd_disable(ctx)

        v = _Virqfd(efd, self._intx_unmask_handler, self._send_intx, deactivate)
        ctx.unmask = v
        efd.waiters.append(v)
        if efd.count and self._intx_unmask_handler():
            self._send_intx()

    def _set_intx_mask(self, start: int, count: int, flags: int, data: bytes) -> None:
        """``vfio_pci_set_intx_mask``: ENOTTY for an eventfd (not implemented there)."""
        if self.irq_type != u.VFIO_PCI_INTX_IRQ_INDEX or start != 0 or count != 1:
            raise InvalidArgument("SET_IRQS: INTx mask wants INTx enabled, start 0, count 1")
        if flags & u.VFIO_IRQ_SET_DATA_NONE or (flags & u.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self.intx_mask()
        elif flags & u.VFIO_IRQ_SET_DATA_EVENTFD:
            raise NotATty("SET_IRQS: INTx mask through an eventfd is not implemented")

    def _set_intx_trigger(self, proc: Process, start: int, count: int, flags: int,
                          data: bytes) -> None:
        """``vfio_pci_set_intx_trigger``."""
        is_intx = self.irq_type == u.VFIO_PCI_INTX_IRQ_INDEX
        if is_intx and not count and flags & u.VFIO_IRQ_SET_DATA_NONE:
            self._intx_disable()
            return
        if not (is_intx or self.irq_type == _IRQ_NONE) or start != 0 or count != 1:
            raise InvalidArgument("SET_IRQS: INTx trigger wants start 0, count 1")
        if flags & u.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = int.from_bytes(data[:4], "little", signed=True)
            trigger = eventfd_ctx_fdget(proc, fd) if fd >= 0 else None
            if is_intx:  # vfio_intx_set_signal
                old, self.ctx[0].trigger = self.ctx[0].trigger, trigger
                if old is not None:
                    old.put()
                return
            try:
                self._intx_enable(trigger)
            except KernelError:  # any failure of vfio_intx_enable puts the trigger
                if trigger is not None:
                    trigger.put()
                raise
            return
        if not is_intx:
            raise InvalidArgument("SET_IRQS: INTx is not enabled")
        if flags & u.VFIO_IRQ_SET_DATA_NONE or (flags & u.VFIO_IRQ_SET_DATA_BOOL and data[0]):
            self._send_intx()

    # -- MSI ---------------------------------------------------------------------------------
    def _msi_enable(self, nvec: int) -> int:
        """``vfio_msi_enable``: EINVAL unless no interrupt is set up; ERANGE for no vector
        (``pci_alloc_irq_vectors(pdev, 1, 0)``: a SET_IRQS with count 0 and eventfd
        data gets there); the host allocates ``nvec`` vectors (each a message from the
        platform, vector 0's written to the function, MSI enabled there and INTx
        disabled) or returns how many it could give when fewer. The allocations of
        ``pci_alloc_irq_vectors``: the MSI descriptor (``msi_alloc_desc``), one
        ``irq_desc`` per vector (``alloc_desc``), then the platform's (x86 none; arm64
        ``iommu_dma_prepare_msi``'s); ENOMEM, all freed. Lab: the per-device
        ``msi_device_data`` and MSI domain, the hierarchy's ``irq_data`` and the
        vector's ``apic_chip_data`` are not points."""
        if self.irq_type != _IRQ_NONE:
            raise InvalidArgument("SET_IRQS: another interrupt type is enabled")
        if nvec < 1:  # __pci_enable_msi_range: maxvec below minvec (1)
            raise kernel_error(errno.ERANGE, "SET_IRQS: MSI with start + count 0: "
                               "pci_alloc_irq_vectors(1, 0) is ERANGE")
        supported = self.irq_count(u.VFIO_PCI_MSI_IRQ_INDEX)
        if supported < nvec:
            return supported
        host = self.dev.machine.host_msi
        fail = self._fail
        fail.check("kzalloc(msi_desc)")  # msi_setup_msi_desc: one descriptor for nvec
        for _ in range(nvec):  # __irq_alloc_descs
            fail.check("kzalloc(irq_desc)")
        msgs: list[int] = []
        address = 0
        try:
            for _ in range(nvec):  # ENOSPC, or ENOMEM from iommu_dma_prepare_msi
                address, data = host.alloc(self.dev)
                msgs.append(data)
        except OSError:
            for data in msgs:
                host.release(self.dev, data)
            raise
        self.msi_msgs = msgs
        self.fn.program_msi(address, msgs[0], enable=True)
        self.fn.intx(False)  # pci_intx_for_msi
        self.irq_type = u.VFIO_PCI_MSI_IRQ_INDEX
        self.msi_qmax = (2 * nvec - 1).bit_length() - 1  # fls(nvec * 2 - 1) - 1
        return 0

    def _msi_set_vector_signal(self, proc: Process, vector: int, fd: int) -> None:
        """``vfio_msi_set_vector_signal``: free the vector's handler and trigger, then
        (``fd`` >= 0) request it again with the new eventfd: EINVAL for a vector the
        host did not allocate, then the context (:meth:`_ctx_alloc`) and its name
        (ENOMEM), EBADF/EINVAL for an fd that is not an eventfd, ``request_irq``'s
        ``irqaction`` (ENOMEM, the trigger put); each failure frees the context. Lab:
        the /proc/irq entries ``request_irq`` makes, whose failures it ignores, are not
        points."""
        host = self.dev.machine.host_msi
        ctx = self.ctx.pop(vector, None)
        if ctx is not None:
            host.free(self.dev, ctx.msg)
            if ctx.trigger is not None:
                ctx.trigger.put()
        if fd < 0:
            return
        if vector >= len(self.msi_msgs):  # pci_irq_vector: -EINVAL
            raise InvalidArgument(f"SET_IRQS: MSI vector {vector} is not allocated")
        self._ctx_alloc(vector)
        self._fail.check("kasprintf(vfio-msi name)")
        trigger = eventfd_ctx_fdget(proc, fd)
        try:
            self._fail.check("kzalloc(irqaction)")  # request_irq
        except KernelError:
            trigger.put()
            raise
        msg = self.msi_msgs[vector]
        host.request(self.dev, msg, trigger.signal)
        self.ctx[vector] = _IrqCtx(trigger, msg=msg)

    def _msi_set_block(self, proc: Process, start: int, count: int, fds: list[int]) -> None:
        """``vfio_msi_set_block``: on the first failure the vectors done are undone."""
        vector = start
        try:
            for vector in range(start, start + count):
                self._msi_set_vector_signal(proc, vector, fds[vector - start])
        except OSError:
            for done in range(start, vector):
                self._msi_set_vector_signal(proc, done, -1)
            raise

    def _msi_disable(self) -> None:
        """``vfio_msi_disable``: every vector's handler and trigger, then the host's
        vectors (``pci_free_irq_vectors``: MSI disabled at the function, INTx disable
        cleared again)."""
        host = self.dev.machine.host_msi
        for vector in sorted(self.ctx):
            ctx = self.ctx.pop(vector)
            host.free(self.dev, ctx.msg)
            if ctx.trigger is not None:
                ctx.trigger.put()
        for msg in self.msi_msgs:
            host.release(self.dev, msg)
        self.msi_msgs = []
        self.fn.program_msi(0, 0, enable=False)
        self.fn.intx(True)
        self.irq_type = _IRQ_NONE

    def _set_msi_trigger(self, proc: Process, index: int, start: int, count: int,
                         flags: int, data: bytes) -> int:
        """``vfio_pci_set_msi_trigger``; a positive return is the vector count the host
        could give (``vfio_msi_enable``'s, passed to the caller as the ioctl's)."""
        here = self.irq_type == index
        if here and not count and flags & u.VFIO_IRQ_SET_DATA_NONE:
            self._msi_disable()
            return 0
        if not (here or self.irq_type == _IRQ_NONE):
            raise InvalidArgument("SET_IRQS: another interrupt type is enabled")
        if flags & u.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = [int.from_bytes(data[4 * i:4 * i + 4], "little", signed=True)
                   for i in range(count)]
            if here:
                self._msi_set_block(proc, start, count, fds)
                return 0
            ret = self._msi_enable(start + count)
            if ret:
                return ret
            try:
                self._msi_set_block(proc, start, count, fds)
            except OSError:
                self._msi_disable()
                raise
            return 0
        if not here:
            raise InvalidArgument("SET_IRQS: MSI is not enabled")
        for i in range(start, start + count):
            ctx = self.ctx.get(i)
            if ctx is None or ctx.trigger is None:
                continue
            if flags & u.VFIO_IRQ_SET_DATA_NONE or \
                    (flags & u.VFIO_IRQ_SET_DATA_BOOL and data[i - start]):
                ctx.trigger.signal()
        return 0

    # -- ERR / REQ ---------------------------------------------------------------------------
    def _set_ctx_trigger_single(self, proc: Process, name: str, count: int, flags: int,
                                data: bytes) -> None:
        """``vfio_pci_set_ctx_trigger_single`` on ``err_trigger`` or ``req_trigger``."""
        cur: EventFdCtx | None = getattr(self, name)
        if flags & u.VFIO_IRQ_SET_DATA_NONE:
            if cur is None:
                raise InvalidArgument("SET_IRQS: no eventfd to signal or clear")
            if count:
                cur.signal()
                return
            self._replace(name, None)
        elif flags & u.VFIO_IRQ_SET_DATA_BOOL:
            if not count:
                raise InvalidArgument("SET_IRQS: BOOL data needs count 1")
            if data[0] and cur is not None:
                cur.signal()
        elif flags & u.VFIO_IRQ_SET_DATA_EVENTFD:
            if not count:
                raise InvalidArgument("SET_IRQS: EVENTFD data needs count 1")
            fd = int.from_bytes(data[:4], "little", signed=True)
            if fd == -1:
                self._replace(name, None)
            elif fd >= 0:
                self._replace(name, eventfd_ctx_fdget(proc, fd))
            else:
                raise InvalidArgument(f"SET_IRQS: fd {fd}")
        else:
            raise InvalidArgument("SET_IRQS: no data type")

    def _replace(self, name: str, new: EventFdCtx | None) -> None:
        """``vfio_pci_eventfd_replace_locked``."""
        old: EventFdCtx | None = getattr(self, name)
        setattr(self, name, new)
        if old is not None:
            old.put()

    # -- vfio_pci_set_irqs_ioctl -------------------------------------------------------------
    def set_irqs_ioctl(self, proc: Process, flags: int, index: int, start: int, count: int,
                       data: bytes) -> int:
        """``vfio_pci_set_irqs_ioctl``: ENOTTY for an action the index does not have
        (MSI masking, ERR on a conventional PCI function)."""
        action = flags & u.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if index == u.VFIO_PCI_INTX_IRQ_INDEX:
            if action == u.VFIO_IRQ_SET_ACTION_MASK:
                self._set_intx_mask(start, count, flags, data)
                return 0
            if action == u.VFIO_IRQ_SET_ACTION_UNMASK:
                self._set_intx_unmask(proc, start, count, flags, data)
                return 0
            if action == u.VFIO_IRQ_SET_ACTION_TRIGGER:
                self._set_intx_trigger(proc, start, count, flags, data)
                return 0
        elif index == u.VFIO_PCI_MSI_IRQ_INDEX and action == u.VFIO_IRQ_SET_ACTION_TRIGGER:
            return self._set_msi_trigger(proc, index, start, count, flags, data)
        # MSI-X and ERR reach no handler here: no function of the model has MSI-X or is
        # PCIe, so their count is 0 and validation refused them (EINVAL) already
        elif index == u.VFIO_PCI_REQ_IRQ_INDEX and action == u.VFIO_IRQ_SET_ACTION_TRIGGER:
            if start != 0 or count > 1:
                raise InvalidArgument("SET_IRQS: REQ wants start 0, count 0 or 1")
            self._set_ctx_trigger_single(proc, "req_trigger", count, flags, data)
            return 0
        raise NotATty(f"SET_IRQS: action {action:#x} on index {index} is not supported")

    def disable_all(self) -> None:
        """What ``vfio_pci_core_disable`` and ``vfio_pci_core_close_device`` undo: the
        interrupt type in use (SET_IRQS DATA_NONE | TRIGGER, count 0), ``virq_disabled``
        and the ERR and REQ triggers."""
        if self.irq_type == u.VFIO_PCI_INTX_IRQ_INDEX:
            self._intx_disable()
        elif self.irq_type == u.VFIO_PCI_MSI_IRQ_INDEX:
            self._msi_disable()
        self.virq_disabled = False
        self._replace("err_trigger", None)
        self._replace("req_trigger", None)


def get_irq_info(irqs: VfioPciIrqs, a: _Arg) -> int:
    """``vfio_pci_ioctl_get_irq_info``: EINVAL for a short ``argsz`` or an index past
    the last, and for ERR on a conventional PCI function; writes back ``minsz`` bytes."""
    argsz, _, index, _ = u.IRQ_INFO.unpack(a.read(0, u.IRQ_INFO.size))
    if argsz < u.IRQ_INFO.size or index >= u.VFIO_PCI_NUM_IRQS:
        raise InvalidArgument(f"DEVICE_GET_IRQ_INFO: argsz {argsz} or index {index}")
    if index == u.VFIO_PCI_ERR_IRQ_INDEX:  # pci_is_pcie: no function of the model is
        raise InvalidArgument("DEVICE_GET_IRQ_INFO: ERR is for PCIe functions")
    flags = u.VFIO_IRQ_INFO_EVENTFD
    count = irqs.irq_count(index)
    if index == u.VFIO_PCI_INTX_IRQ_INDEX:
        flags |= u.VFIO_IRQ_INFO_MASKABLE | u.VFIO_IRQ_INFO_AUTOMASKED
    else:  # no MSI-X, so no dynamic MSI-X
        flags |= u.VFIO_IRQ_INFO_NORESIZE
    a.write(0, u.IRQ_INFO.pack(argsz, flags, index, count))
    return 0


def set_irqs(irqs: VfioPciIrqs, proc: Process, a: _Arg) -> int:
    """``vfio_pci_ioctl_set_irqs``: the header, ``vfio_set_irqs_validate_and_prepare``
    against the index's count, ``count`` entries of data (bounded by that count, so
    never sized by the caller), then the action."""
    argsz, flags, index, start, count = u.IRQ_SET.unpack(a.read(0, u.IRQ_SET.size))
    size = validate_and_prepare(argsz, flags, index, start, count, irqs.irq_count(index),
                                u.VFIO_PCI_NUM_IRQS)
    if size:  # memdup_user: the copy's allocation, then the copy (EFAULT)
        irqs._fail.check("memdup_user(vfio_irq_set data)")
    data = a.read(u.IRQ_SET.size, size) if size else b""
    return irqs.set_irqs_ioctl(proc, flags, index, start, count, data)


def validate_and_prepare(argsz: int, flags: int, index: int, start: int, count: int,
                         num_irqs: int, max_irq_type: int) -> int:
    """``vfio_set_irqs_validate_and_prepare``: EINVAL for a short ``argsz``, an index
    past ``max_irq_type``, a ``start + count`` that would wrap 32 bits, unknown flags,
    a range outside the index's ``num_irqs``, not exactly one data type, or data that
    ``argsz`` does not cover; the data size."""
    minsz = u.IRQ_SET.size
    if argsz < minsz or index >= max_irq_type or count >= _U32_MAX - start or \
            flags & ~(u.VFIO_IRQ_SET_DATA_TYPE_MASK | u.VFIO_IRQ_SET_ACTION_TYPE_MASK):
        raise InvalidArgument(f"SET_IRQS: argsz {argsz}, index {index}, start {start}, "
                              f"count {count} or flags {flags:#x}")
    if start >= num_irqs or start + count > num_irqs:
        raise InvalidArgument(f"SET_IRQS: start {start} count {count}: index {index} has "
                              f"{num_irqs}")
    size = {u.VFIO_IRQ_SET_DATA_NONE: 0, u.VFIO_IRQ_SET_DATA_BOOL: 1,
            u.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(flags & u.VFIO_IRQ_SET_DATA_TYPE_MASK)
    if size is None:
        raise InvalidArgument(f"SET_IRQS: flags {flags:#x}: not one data type")
    if size and argsz - minsz < count * size:
        raise InvalidArgument(f"SET_IRQS: argsz {argsz} does not hold {count} entries")
    return count * size
