"""vfio-pci's state of an open device and the parts of vfio_pci_core.c and
vfio_pci_rdwr.c beyond GET_INFO and GET_REGION_INFO: enable at the first open, disable
at the last close, the IRQ ioctls, RESET, and reads and writes of the regions at
``index << VFIO_PCI_OFFSET_SHIFT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Busy, InvalidArgument, IoError, KernelError, NoDevice
from ..pcihw import PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY
from . import uapi as u
from .pci_config import VfioPciConfig
from .pci_irq import VfioPciIrqs, get_irq_info, set_irqs

if TYPE_CHECKING:
    from ..pcidev import PciDevice
    from ..syscall.process import Process
    from .files import _Arg

__all__ = ["VfioPciCore"]


class VfioPciCore:
    """What ``struct vfio_pci_core_device`` holds while the device is open:
    ``reset_works``, the saved config state, ``vconfig`` (:class:`VfioPciConfig`) and
    the interrupts (:class:`VfioPciIrqs`)."""

    def __init__(self, dev: PciDevice) -> None:
        """``vfio_pci_core_enable``: bus mastering off, the device enabled (memory
        decoding on), reset once if a reset method works (``reset_works``), its config
        saved and stored (``pci_store_saved_state``, whose failed allocation only leaves
        no stored state), INTx disable cleared, then ``vfio_config_init``; if that
        fails the stored state is freed and the device disabled (bus mastering off;
        the reset and the command bits stay, as in the kernel)."""
        self.dev = fn = dev.fn
        self.pdev = dev
        self._fail = fail = dev.machine.mem.fail_nth
        fn.cfg_write(PCI_COMMAND, 2, fn.command & ~PCI_COMMAND_MASTER)  # pci_clear_master
        fn.cfg_write(PCI_COMMAND, 2, fn.command | PCI_COMMAND_MEMORY)  # pci_enable_device
        self.reset_works = fn.ident.reset
        self.resets = 0
        if self.reset_works:
            self._try_reset_function()
        # pci_save_state, then pci_store_saved_state's copy (None: the kernel's NULL)
        self.saved_state: bytes | None = None if fail.fails(
            "kzalloc(pci_store_saved_state)") else bytes(fn.cfg)
        fn.intx(True)
        self.barmap: set[int] = set()  # vdev->barmap: BARs requested and iomapped
        self.irqs = VfioPciIrqs(dev)
        try:
            self.config = VfioPciConfig(fn, self.irqs, fail)
        except KernelError:
            self.saved_state = None  # kfree(vdev->pci_saved_state)
            fn.cfg_write(PCI_COMMAND, 2, fn.command & ~PCI_COMMAND_MASTER)  # pci_disable_device
            raise
        self.irqs.config = self.config

    def close(self) -> None:
        """``vfio_pci_core_disable`` and ``vfio_pci_core_close_device``: bus mastering
        off, every interrupt torn down (eventfds put), the BAR maps unmapped and their
        regions released; then, with a stored state (or none but a working reset, when
        the current state is saved instead), the command register cleared to INTx
        disable, a reset if one works and the state restored; the device disabled."""
        fn = self.dev
        fn.cfg_write(PCI_COMMAND, 2, fn.command & ~PCI_COMMAND_MASTER)
        self.irqs.disable_all()
        self.barmap.clear()  # pci_iounmap, pci_release_selected_regions
        state = self.saved_state
        if state is None and self.reset_works:
            state = bytes(fn.cfg)  # pci_save_state
        if state is not None:
            fn.cfg_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE)
            if self.reset_works:
                fn.function_reset()
                self.resets += 1
            self._restore(state)
        fn.cfg_write(PCI_COMMAND, 2, fn.command & ~PCI_COMMAND_MASTER)  # pci_disable_device

    def setup_barmap(self, bar: int) -> None:
        """``vfio_pci_core_setup_barmap`` (and the same steps in
        ``vfio_pci_core_mmap``): once per BAR, ``pci_request_selected_regions`` (its
        ``struct resource``, whose failed allocation ``__request_region`` reports as
        NULL and ``pci_request_region`` as EBUSY), then ``pci_iomap`` (ENOMEM, the
        region released again). Lab: ``ioremap``'s vmap area and page tables are one
        point."""
        if bar in self.barmap:
            return
        fail = self._fail
        if fail.fails("kzalloc(resource)"):
            raise Busy(f"{self.pdev.bdf}: BAR {bar}: pci_request_selected_regions failed "
                       "(injected allocation failure, fail-nth)")
        fail.check("ioremap(pci_iomap)")
        self.barmap.add(bar)

    def _restore(self, state: bytes) -> None:
        """``pci_restore_state``: the saved header and capabilities, written back."""
        fn = self.dev
        for off in range(0, len(state), 4):
            if fn.cfg[off:off + 4] != state[off:off + 4]:
                fn.cfg_write(off, 4, int.from_bytes(state[off:off + 4], "little"))

    def _try_reset_function(self) -> None:
        """``pci_try_reset_function``: save the config and disable the function, reset
        it, restore the config."""
        state = bytes(self.dev.cfg)
        self.dev.cfg_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE)
        self.dev.function_reset()
        self.resets += 1
        self._restore(state)

    # -- ioctls ------------------------------------------------------------------------------
    def ioctl(self, proc: Process, request: int, a: _Arg) -> int:
        """The IRQ ioctls of ``vfio_pci_core_ioctl``."""
        if request == u.VFIO_DEVICE_GET_IRQ_INFO:
            return get_irq_info(self.irqs, a)
        assert request == u.VFIO_DEVICE_SET_IRQS
        return set_irqs(self.irqs, proc, a)

    def hot_reset_info(self, a: _Arg) -> int:
        """``vfio_pci_ioctl_get_pci_hot_reset_info``: EFAULT/EINVAL for the header, then
        ENODEV: lab: every function of the model sits on a root bus with no slot, so
        neither ``pci_probe_reset_slot`` nor ``pci_probe_reset_bus`` finds a reset (as
        for QEMU's q35 devices at 0000:00:xx.0)."""
        argsz = u.HOT_RESET_INFO.unpack(a.read(0, u.HOT_RESET_INFO.size))[0]
        if argsz < u.HOT_RESET_INFO.size:
            raise InvalidArgument(f"GET_PCI_HOT_RESET_INFO: argsz {argsz} < "
                                  f"{u.HOT_RESET_INFO.size}")
        raise NoDevice(f"GET_PCI_HOT_RESET_INFO: {self.pdev.bdf} has no slot or bus reset")

    def hot_reset(self, a: _Arg, cdev_opened: bool) -> int:
        """``vfio_pci_ioctl_pci_hot_reset``: EINVAL for a short ``argsz``, any flag, or a
        group fd count that does not match the way the device was opened (none for a
        cdev, some for a group's device fd); then ENODEV, as for the info."""
        argsz, flags, count = u.HOT_RESET.unpack(a.read(0, u.HOT_RESET.size))
        if argsz < u.HOT_RESET.size or flags:
            raise InvalidArgument(f"PCI_HOT_RESET: argsz {argsz} or flags {flags:#x}")
        if bool(count) == cdev_opened:
            raise InvalidArgument(f"PCI_HOT_RESET: count {count} does not suit a device "
                                  f"{'cdev' if cdev_opened else 'fd of a group'}")
        raise NoDevice(f"PCI_HOT_RESET: {self.pdev.bdf} has no slot or bus reset")

    def reset(self) -> int:
        """``vfio_pci_ioctl_reset``: EINVAL unless a reset method works; then
        ``pci_try_reset_function``. Lab: the BAR mappings vfio zaps first are not
        zapped in the model."""
        if not self.reset_works:
            raise InvalidArgument(f"DEVICE_RESET: {self.pdev.bdf} has no reset method")
        self._try_reset_function()
        return 0

    # -- vfio_pci_rw -------------------------------------------------------------------------
    def rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """``vfio_pci_rw``: EINVAL for an index past the regions; config space
        (:meth:`VfioPciConfig.rw`), BAR 0 (``vfio_pci_bar_rw``); EINVAL for the other
        BARs and the ROM (none), a ROM write and VGA (none). A read gives the bytes, a
        write the count written. ``count`` is already bounded by MAX_RW_COUNT and by
        ``len(data)``; what moves is bounded by the region."""
        index = pos >> u.VFIO_PCI_OFFSET_SHIFT
        if index >= u.VFIO_PCI_NUM_REGIONS:
            raise InvalidArgument(f"pread/pwrite: offset {pos:#x}: region {index} does not "
                                  "exist")
        if index == u.VFIO_PCI_CONFIG_REGION_INDEX:
            return self.config.rw(pos, count, data)
        if index == u.VFIO_PCI_ROM_REGION_INDEX and data is not None:
            raise InvalidArgument("pwrite: the ROM region is read-only")
        if index == u.VFIO_PCI_BAR0_REGION_INDEX:
            return self._bar_rw(pos & u.VFIO_PCI_OFFSET_MASK, count, data)
        raise InvalidArgument(f"pread/pwrite: region {index} has no resource on "
                              f"{self.pdev.bdf}")

    def _bar_rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """``vfio_pci_bar_rw``: EINVAL at or past the BAR's end, the count cut to it;
        ``vfio_pci_core_do_io_rw``: accesses of 8, 4, 2 or 1 bytes as alignment allows,
        each EIO while the virtual command register has memory decoding off. A BAR of
        registers sees each access; a BAR of memory is copied in one piece. O(count /
        8) accesses on registers."""
        pdev = self.pdev
        end = pdev.bar0_size
        if pos >= end:
            raise InvalidArgument(f"pread/pwrite: offset {pos:#x} is past BAR 0's "
                                  f"{end:#x} bytes")
        count = min(count, end - pos)
        self.setup_barmap(u.VFIO_PCI_BAR0_REGION_INDEX)
        if not self.config.memory_enabled():
            raise IoError(f"{pdev.bdf}: BAR 0 access with memory decoding disabled")
        mem, base = pdev.mem, pdev.bar0 + pos
        if not mem.has_mmio_ops(base):
            if data is None:
                return mem.read(base, count)
            mem.write(base, data[:count])
            return count
        out = bytearray()
        off = 0
        while off < count:
            left, at = count - off, pos + off
            width = 8 if left >= 8 and not at % 8 else 4 if left >= 4 and not at % 4 else \
                2 if left >= 2 and not at % 2 else 1
            if data is None:
                out += mem.read(base + off, width)
            else:
                mem.write(base + off, data[off:off + width])
            off += width
        return bytes(out) if data is None else count
