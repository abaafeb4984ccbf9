"""A device BAR that a program maps under ``iommulab exec`` (lab).

On Linux, ``vfio_pci_core_mmap`` makes a VM_PFNMAP mapping that ``vfio_pci_mmap_fault``
fills with the BAR's own pfns: the program's loads and stores reach the device, and
the device's view of its BAR (a ``pread`` of the region, a peer's DMA) is the same
bytes. Under the bridge the handler answers the ``mmap`` with CONTINUE, so the kernel
maps the file description's backing tmpfs inode instead. For that inode and the model's
BAR to be one set of bytes, the BAR's bytes live in the inode while it backs the BAR:
copied in at the first ``mmap`` through the description, the BAR's frames then routed
to the file by :class:`~iommulab.mem.external.ExternalFrames` (so ``pread``/``pwrite``
of the region, DMA and Python reads of physical memory see the program's stores, and
the program sees theirs), and copied back when the description is released, which the
kernel does only once its last fd and its last mapping are gone. ``fork`` needs nothing:
the child's mapping is of the same inode. The inode is named in ``SharedFiles.bars`` so
the program's mirror maps it as the BAR's pages (VM_PFNMAP), which VFIO type1 maps for
peer-to-peer DMA.

Only a BAR of plain memory can be given this way: a BAR of registers (edu) acts on each
access, and a load or store through a mapping never reaches the model. The handler
clears such a device's ``bar0_mmap``, as vfio-pci without ``bar_mmap_supported``.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ..bridge.handler import Backing
from ..errors import kernel_error
from ..mem.external import ExternalFrames

if TYPE_CHECKING:
    from ..mem.physmem import PhysMem
    from ..pcidev import PciDevice
    from .usermem import SharedFiles

__all__ = ["BarMaps", "MappedBar"]

PAGE_SHIFT = 12


class MappedBar:
    """A device's BAR 0 whose bytes are a backing file's: the frames' owner, by file
    offset (BAR 0 is region 0, so its file offset is its BAR offset)."""

    __slots__ = ("dev", "fd", "handle", "inode")

    def __init__(self, dev: PciDevice, handle: object, fd: int) -> None:
        self.dev = dev
        self.handle = handle  # the file description whose inode holds the bytes
        self.fd = fd  # a dup of the supervisor's description: shares it, adds no close
        st = os.fstat(fd)
        #: the inode as ``/proc/PID/maps`` names it: (major, minor, inode)
        self.inode = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)

    def frame_read(self, va: int, n: int) -> bytes:
        data = os.pread(self.fd, n, va)
        return data if len(data) == n else data + bytes(n - len(data))

    def frame_write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            done = os.pwrite(self.fd, view, va)
            view, va = view[done:], va + done


class BarMaps:
    """The BARs whose bytes are a backing file's, by device; the program mirrors learn
    their inodes through ``shared.bars`` (a mapping of one is the BAR's pages)."""

    def __init__(self, mem: PhysMem, shared: SharedFiles) -> None:
        self.mem = mem
        self.shared = shared
        self._bars: dict[str, MappedBar] = {}

    def __len__(self) -> int:
        return len(self._bars)

    def get(self, dev: PciDevice) -> MappedBar | None:
        return self._bars.get(dev.bdf)

    def map(self, dev: PciDevice, handle: object, backing: Backing) -> None:
        """Back ``dev``'s BAR 0 by ``handle``'s inode (nothing to do if it already is).
        Lab: EBUSY while another description of the device backs it (a second device
        fd from GET_DEVICE_FD while the first or a mapping through it lives): two
        inodes cannot share pages."""
        bar = self._bars.get(dev.bdf)
        if bar is not None:
            if bar.handle is handle:
                return
            raise kernel_error(errno.EBUSY, f"mmap: {dev.bdf}'s BAR 0 is mapped through "
                               "another file description (one per device under exec)")
        fd = os.dup(backing.fd)
        try:
            bar = MappedBar(dev, handle, fd)
            if os.fstat(fd).st_size < dev.bar0_size:
                os.ftruncate(fd, dev.bar0_size)
            bar.frame_write(0, self.mem.read(dev.bar0, dev.bar0_size))
        except BaseException:
            os.close(fd)
            raise
        if self.mem.external is None:
            self.mem.external = ExternalFrames()
        self.mem.external.add(dev.bar0 >> PAGE_SHIFT, dev.bar0_size >> PAGE_SHIFT, bar, 0)
        self._bars[dev.bdf] = bar
        self.shared.bars[bar.inode] = dev.bar0

    def release(self, handle: object) -> None:
        """``handle``'s description is gone (no fd, no mapping): a BAR it backed takes
        its bytes back."""
        for bdf, bar in list(self._bars.items()):
            if bar.handle is handle:
                self._unmap(bdf)

    def close(self) -> None:
        for bdf in list(self._bars):
            self._unmap(bdf)

    def _unmap(self, bdf: str) -> None:
        bar = self._bars.pop(bdf)
        del self.shared.bars[bar.inode]
        dev = bar.dev
        data = bar.frame_read(0, dev.bar0_size)
        assert self.mem.external is not None
        self.mem.external.drop(dev.bar0 >> PAGE_SHIFT, dev.bar0_size >> PAGE_SHIFT)
        self.mem.write(dev.bar0, data)
        os.close(bar.fd)
