"""Hostile input to vfio-pci's IRQ ioctls and region reads and writes: the kernel's errno
in the kernel's order, nothing changed, and no host memory sized by the caller."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.vfio import uapi as u

from ..helpers import expect_errno, peak_host_bytes
from .test_pci_edu import BAR0, CFG, TRIGGER_EVENTFD, EduVmm

U32_MAX = 0xFFFF_FFFF


@pytest.fixture
def v() -> EduVmm:
    return EduVmm("x86-vtd")


def _irq_state(v: EduVmm) -> tuple[object, ...]:
    vdev = v.m.vfio_devices[v.dev.bdf]
    assert vdev.pci is not None
    irqs = vdev.pci.irqs
    irqs._check()
    return (irqs.irq_type, sorted(irqs.ctx), irqs.req_trigger, v.dev.fn.msi_enabled,
            v.dev.fn.command, [c.kref for c in irqs.held()])


def test_get_irq_info_argsz_index_and_short_buffer(v: EduVmm) -> None:
    for argsz, index in ((15, 0), (16, u.VFIO_PCI_NUM_IRQS), (16, U32_MAX),
                         (16, u.VFIO_PCI_ERR_IRQ_INDEX)):
        buf = bytearray(u.IRQ_INFO.pack(argsz, 0, index, 0))
        expect_errno(errno.EINVAL, v.p.ioctl, v.d, u.VFIO_DEVICE_GET_IRQ_INFO, buf)
        assert buf == u.IRQ_INFO.pack(argsz, 0, index, 0)  # nothing written back
    expect_errno(errno.EFAULT, v.p.ioctl, v.d, u.VFIO_DEVICE_GET_IRQ_INFO, bytearray(12))
    expect_errno(errno.EFAULT, v.p.ioctl, v.d, u.VFIO_DEVICE_GET_IRQ_INFO, 0)
    # flags the caller passed are not read: the kernel overwrites them
    buf = bytearray(u.IRQ_INFO.pack(1 << 20, 0xFFFF_FFFF, 1, 77))
    v.p.ioctl(v.d, u.VFIO_DEVICE_GET_IRQ_INFO, buf)
    assert u.IRQ_INFO.unpack(buf) == (1 << 20, u.VFIO_IRQ_INFO_EVENTFD |
                                      u.VFIO_IRQ_INFO_NORESIZE, 1, 1)
    v.close()


@pytest.mark.parametrize(("argsz", "flags", "index", "start", "count"), [
    (19, TRIGGER_EVENTFD, 1, 0, 1),  # argsz below minsz
    (24, TRIGGER_EVENTFD, u.VFIO_PCI_NUM_IRQS, 0, 1),  # no such index
    (24, TRIGGER_EVENTFD, 1, 1, U32_MAX - 1),  # start + count would wrap 32 bits
    (24, TRIGGER_EVENTFD, 1, 0, U32_MAX),
    (24, TRIGGER_EVENTFD | 1 << 6, 1, 0, 1),  # an unknown flag
    (24, TRIGGER_EVENTFD, 1, 1, 0),  # start past the index's vectors
    (24, TRIGGER_EVENTFD, 1, 0, 2),  # more vectors than MSI has
    (24, TRIGGER_EVENTFD, 1, 0, U32_MAX - 1),  # a host-sized count: still the device's
    (24, TRIGGER_EVENTFD, u.VFIO_PCI_MSIX_IRQ_INDEX, 0, 1),  # no MSI-X: count 0
    (24, TRIGGER_EVENTFD, u.VFIO_PCI_ERR_IRQ_INDEX, 0, 1),  # conventional PCI: no ERR
    (24, u.VFIO_IRQ_SET_DATA_EVENTFD | u.VFIO_IRQ_SET_DATA_BOOL |
     u.VFIO_IRQ_SET_ACTION_TRIGGER, 1, 0, 1),  # two data types
    (24, u.VFIO_IRQ_SET_ACTION_TRIGGER, 1, 0, 1),  # no data type
    (23, TRIGGER_EVENTFD, 1, 0, 1),  # argsz does not cover the fd
])
def test_set_irqs_validation_is_einval_and_changes_nothing(
        v: EduVmm, argsz: int, flags: int, index: int, start: int, count: int) -> None:
    efd = v.p.eventfd()
    before = _irq_state(v)
    arg = bytearray(u.IRQ_SET.pack(argsz, flags, index, start, count) +
                    struct.pack("<i", efd))
    peak = peak_host_bytes(lambda: expect_errno(errno.EINVAL, v.p.ioctl, v.d,
                                                u.VFIO_DEVICE_SET_IRQS, arg))
    assert peak < 64 << 10
    assert _irq_state(v) == before and v.p.files[efd].ctx.kref == 1  # type: ignore[attr-defined]
    v.close()


def test_set_irqs_actions_the_index_lacks_are_enotty(v: EduVmm) -> None:
    none = u.VFIO_IRQ_SET_DATA_NONE
    for action, index in ((u.VFIO_IRQ_SET_ACTION_MASK, u.VFIO_PCI_MSI_IRQ_INDEX),
                          (u.VFIO_IRQ_SET_ACTION_UNMASK, u.VFIO_PCI_MSI_IRQ_INDEX),
                          (u.VFIO_IRQ_SET_ACTION_MASK, u.VFIO_PCI_REQ_IRQ_INDEX),
                          (u.VFIO_IRQ_SET_ACTION_MASK | u.VFIO_IRQ_SET_ACTION_TRIGGER,
                           u.VFIO_PCI_INTX_IRQ_INDEX)):
        expect_errno(errno.ENOTTY, v.set_irqs, none | action, index, 0, 1)
    # INTx mask and unmask want INTx enabled: EINVAL before, and the eventfd mask is
    # not implemented in 6.12 (ENOTTY) once it is
    expect_errno(errno.EINVAL, v.set_irqs, none | u.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1)
    efd = v.p.eventfd()
    v.set_irqs(TRIGGER_EVENTFD, 0, 0, 1, struct.pack("<i", efd))
    expect_errno(errno.ENOTTY, v.set_irqs, u.VFIO_IRQ_SET_DATA_EVENTFD |
                 u.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1, struct.pack("<i", efd))
    # MSI while INTx is on: EINVAL, INTx untouched
    before = _irq_state(v)
    expect_errno(errno.EINVAL, v.set_irqs, TRIGGER_EVENTFD, 1, 0, 1, struct.pack("<i", efd))
    assert _irq_state(v) == before
    # REQ: DATA_NONE with no eventfd set is EINVAL; loopback signalling once one is
    expect_errno(errno.EINVAL, v.set_irqs, none | u.VFIO_IRQ_SET_ACTION_TRIGGER, 4, 0, 1)
    req = v.p.eventfd()
    v.set_irqs(TRIGGER_EVENTFD, 4, 0, 1, struct.pack("<i", req))
    v.set_irqs(u.VFIO_IRQ_SET_DATA_BOOL | u.VFIO_IRQ_SET_ACTION_TRIGGER, 4, 0, 1, b"\x01")
    v.set_irqs(none | u.VFIO_IRQ_SET_ACTION_TRIGGER, 4, 0, 1)
    assert v.count(req) == 2
    expect_errno(errno.EINVAL, v.set_irqs, TRIGGER_EVENTFD, 4, 0, 1, struct.pack("<i", -2))
    v.close()


def test_set_irqs_bad_fds_leave_no_interrupt_set_up(v: EduVmm) -> None:
    before = _irq_state(v)
    for index in (u.VFIO_PCI_INTX_IRQ_INDEX, u.VFIO_PCI_MSI_IRQ_INDEX,
                  u.VFIO_PCI_REQ_IRQ_INDEX):
        expect_errno(errno.EBADF, v.set_irqs, TRIGGER_EVENTFD, index, 0, 1,
                     struct.pack("<i", 999))
        expect_errno(errno.EINVAL, v.set_irqs, TRIGGER_EVENTFD, index, 0, 1,
                     struct.pack("<i", v.c))  # the container is not an eventfd
        assert _irq_state(v) == before
    assert not v.m.host_msi.handlers and not v.dev.fn.msi_enabled
    # the data the header promises is beyond the buffer: EFAULT, nothing done
    arg = bytearray(u.IRQ_SET.pack(24, TRIGGER_EVENTFD, 1, 0, 1))
    expect_errno(errno.EFAULT, v.p.ioctl, v.d, u.VFIO_DEVICE_SET_IRQS, arg)
    assert _irq_state(v) == before
    v.close()


def test_eventfd_closed_by_the_process_is_still_signalled(v: EduVmm) -> None:
    """``eventfd_ctx_fdget`` holds the context, not the file: closing the fd leaves the
    trigger working (and the reference goes with the trigger)."""
    efd = v.p.eventfd()
    v.set_cfg(4, 2, 0x6)  # bus mastering: an MSI is a memory write
    v.set_irqs(TRIGGER_EVENTFD, 1, 0, 1, struct.pack("<i", efd))
    ctx = v.p.files[efd].ctx  # type: ignore[attr-defined]
    v.p.close(efd)
    assert ctx.kref == 1
    v.set_reg(0x60, 1)
    assert ctx.count == 1
    v.close()
    assert ctx.kref == 0


@pytest.mark.parametrize(("offset", "n", "err"), [
    (-1, 4, errno.EINVAL),  # pread64: a negative position
    (1 << 63, 4, errno.EINVAL),
    ((1 << 63) - 2, 4, errno.EINVAL),  # rw_verify_area: pos + count past 2^63 - 1
    (9 << u.VFIO_PCI_OFFSET_SHIFT, 4, errno.EINVAL),  # no region 9
    (u.VFIO_PCI_VGA_REGION_INDEX << u.VFIO_PCI_OFFSET_SHIFT, 4, errno.EINVAL),
    (1 << u.VFIO_PCI_OFFSET_SHIFT, 4, errno.EINVAL),  # BAR 1: no resource
    (u.VFIO_PCI_ROM_REGION_INDEX << u.VFIO_PCI_OFFSET_SHIFT, 4, errno.EINVAL),  # no ROM
    (CFG + 0xFE, 4, errno.EFAULT),  # vfio_config_do_rw: past config space
    (CFG + 0x100, 1, errno.EFAULT),
    (CFG, 1 << 40, errno.EFAULT),  # a huge count: refused, not allocated
    (BAR0 + (1 << 20), 4, errno.EINVAL),  # at the BAR's end
])
def test_region_access_errnos(v: EduVmm, offset: int, n: int, err: int) -> None:
    peak = peak_host_bytes(lambda: expect_errno(err, v.p.pread, v.d, n, offset))
    assert peak < 64 << 10
    if offset >= 0 and n < 1 << 40:
        expect_errno(err, v.p.pwrite, v.d, bytes(n), offset)
    v.close()


def test_region_access_bounds(v: EduVmm) -> None:
    p, d = v.p, v.d
    expect_errno(errno.EINVAL, p.pwrite, d, b"x", u.VFIO_PCI_ROM_REGION_INDEX << 40)
    assert p.pread(d, 0, 9 << 40) == b""  # count 0 is answered before the region
    # a BAR read past the end is cut there; edu answers its registers 4 bytes at a time
    assert p.pread(d, 1 << 40, BAR0 + (1 << 20) - 8) == b"\xff" * 8
    assert p.pread(d, 2, BAR0) == b"\xff\xff"  # edu ignores 2-byte accesses
    expect_errno(errno.EINVAL, p.pread, v.c, 4, 0)  # the container has no read
    expect_errno(errno.EBADF, p.pread, 999, 4, 0)
    # 6.12's vfio_msi_config_read writes msi_qmax into the word at the capability's
    # start (ID and next) instead of its flags; the ID is read from the hardware, so a
    # read after a flags read still shows MSI, and the flags keep the function's QMASK
    assert v.cfg(0x42, 2) == 0x80 and v.cfg(0x40, 2) == 0x0005
    vdev = v.m.vfio_devices[v.dev.bdf]
    assert vdev.pci is not None and vdev.pci.config.vconfig[0x40] == 0x01  # the stray write
    # read-only config bytes drop writes; the status and ID do not change
    p.pwrite(d, b"\xff" * 8, CFG)
    assert p.pread(d, 8, CFG)[:4] == bytes.fromhex("3412e811")
    # the command bits went to the hardware but INTx disable, which is virtual; vfio
    # then masks INTx at the device for it (pci_intx), so both read 0x547
    assert v.cfg(4, 2) == 0x547 and v.dev.fn.command == 0x547
    v.close()


def test_msi_eventfd_with_count_zero_is_erange(v: EduVmm) -> None:
    """Validation lets count 0 through with eventfd data (no data to copy), so
    ``vfio_msi_enable(vdev, 0)`` asks ``pci_alloc_irq_vectors`` for between 1 and 0
    vectors: ERANGE from ``__pci_enable_msi_range``, nothing enabled (found by the
    fuzzer)."""
    before = _irq_state(v)
    expect_errno(errno.ERANGE, v.set_irqs, TRIGGER_EVENTFD, u.VFIO_PCI_MSI_IRQ_INDEX, 0, 0)
    assert _irq_state(v) == before
    # INTx with count 0 and eventfd data: vfio_pci_set_intx_trigger's count check
    expect_errno(errno.EINVAL, v.set_irqs, TRIGGER_EVENTFD, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 0)
    v.close()


def test_hot_reset_header_checks_then_enodev(v: EduVmm) -> None:
    """No function of the model has a slot or a bus reset (a root bus, as QEMU's q35
    devices): after the header checks both hot reset ioctls are ENODEV."""
    info = u.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO
    expect_errno(errno.EFAULT, v.p.ioctl, v.d, info, bytearray(8))
    expect_errno(errno.EINVAL, v.p.ioctl, v.d, info, bytearray(u.HOT_RESET_INFO.pack(11, 0, 0)))
    buf = bytearray(u.HOT_RESET_INFO.pack(1 << 10, 7, 9))
    expect_errno(errno.ENODEV, v.p.ioctl, v.d, info, buf)
    assert buf == u.HOT_RESET_INFO.pack(1 << 10, 7, 9)  # nothing copied back
    reset = u.VFIO_DEVICE_PCI_HOT_RESET
    expect_errno(errno.EINVAL, v.p.ioctl, v.d, reset, bytearray(u.HOT_RESET.pack(12, 1, 1)))
    # a group's device fd must name group fds (count > 0), a cdev must not
    expect_errno(errno.EINVAL, v.p.ioctl, v.d, reset, bytearray(u.HOT_RESET.pack(12, 0, 0)))
    expect_errno(errno.ENODEV, v.p.ioctl, v.d, reset,
                 bytearray(u.HOT_RESET.pack(16, 0, 1) + struct.pack("<i", v.g)))
    v.close()


def test_one_eventfd_as_intx_trigger_and_unmask_eventfd_returns(v: EduVmm) -> None:
    """One eventfd both INTx's trigger and its unmask eventfd, while edu holds its line
    asserted: each signal of the trigger wakes the unmask virqfd, whose handler finds the
    line still pending and schedules the thread that signals the trigger again. The
    kernel runs that thread as deferred work; the model runs it at once but not from
    inside itself, so the write that raises the interrupt and an unmask both return,
    with INTx masked (found by the fail-nth random run of the fuzzer's device calls:
    unbounded recursion before)."""
    efd = v.p.eventfd()
    fd = struct.pack("<i", efd)
    v.set_irqs(TRIGGER_EVENTFD, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, fd)
    v.set_irqs(u.VFIO_IRQ_SET_DATA_EVENTFD | u.VFIO_IRQ_SET_ACTION_UNMASK,
               u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, fd)
    ctx = v.p.files[efd].ctx  # type: ignore[attr-defined]
    v.set_reg(0x60, 1)  # edu raises its interrupt and keeps the line asserted
    irqs = v.m.vfio_devices[v.dev.bdf].pci.irqs
    assert irqs.ctx[0].masked and ctx.signals == 2  # the handler's, the thread's
    v.set_irqs(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_UNMASK,
               u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)  # still pending: sent again, masked
    assert irqs.ctx[0].masked and ctx.signals == 4
    v.set_reg(0x64, 1)  # acknowledged: the line drops; the next unmask unmasks
    v.set_irqs(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_UNMASK,
               u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
    assert not irqs.ctx[0].masked
    irqs._check()
    v.close()
