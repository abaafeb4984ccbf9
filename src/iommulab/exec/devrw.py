"""``read``/``write``/``pread``/``pwrite`` of a model file with the program's buffer
(lab: ``iommulab exec``): ``vfs_read``/``vfs_write``'s checks, then the file's own read
or write (a VFIO device fd's regions: ``vfio_pci_rw``; a sysfs attribute), with the
buffer copied as ``copy_to_user``/``copy_from_user`` would.

The bridge has already cut ``count`` to MAX_RW_COUNT, refused a negative ``pread``
offset and chosen the offset (the file position for ``read``/``write``, moved on by the
bridge afterwards); the vector forms arrive here one segment at a time.

A buffer that faults: vfio-pci copies each access (``vfio_pci_core_do_io_rw``: 8, 4, 2
or 1 bytes as alignment allows; config space ``vfio_config_do_rw``: up to 4) from or to
the user on its own and answers EFAULT at the first that faults, the accesses before it
done. For a write the model does exactly those accesses (the readable prefix cut to whole
accesses), then answers EFAULT. Lab, for a read: the model reads the whole range from
the device before copying it out, so a fault part-way has done the accesses after it too
(reads of edu's registers and of config space have no side effects), and a first access
that faults answers EFAULT after the region checks, as the kernel does.
"""

from __future__ import annotations

import errno
import os

from ..bridge.memory import TargetMemory
from ..errors import BadAddress, kernel_error
from ..iommufd.eventq import EventqFile
from ..vfio import uapi as u
from ..vfio.device import VfioDeviceFile
from ..vfio.files import VfioFile

__all__ = ["eventq_rw", "read_file", "write_file"]

_TASK_SIZE = 1 << 47  # access_ok's limit (x86_64, 4-level paging)


def _has(f: VfioFile, op: str) -> bool:
    """FMODE_CAN_READ/WRITE: the file's class has its own ``pread``/``pwrite``."""
    return getattr(type(f), op) is not getattr(VfioFile, op)


def _verify(f: VfioFile, flags: int, buf: int, count: int, pos: int, write: bool) -> None:
    """``vfs_read``/``vfs_write`` before the driver: EBADF without FMODE_READ/WRITE,
    EINVAL without a read/write op, EFAULT past TASK_SIZE (``access_ok``), EINVAL when
    ``pos + count`` passes 2^63 - 1 (``rw_verify_area``)."""
    acc = flags & os.O_ACCMODE
    if (write and acc == os.O_RDONLY) or (not write and acc == os.O_WRONLY):
        raise kernel_error(errno.EBADF, "the file is not open for that")
    if not _has(f, "pwrite" if write else "pread"):
        raise kernel_error(errno.EINVAL, "the file has no read or write")
    if buf + count > _TASK_SIZE:
        raise BadAddress(f"buffer {buf:#x}+{count:#x} is past TASK_SIZE")
    if pos + count >= 1 << 63:
        raise kernel_error(errno.EINVAL, f"{count} bytes at {pos:#x} pass 2^63 - 1")


def read_file(f: VfioFile, flags: int, buf: int, count: int, pos: int,
              mem: TargetMemory) -> int:
    """``vfs_read``: the bytes the file gives at ``pos``, copied to ``buf``."""
    _verify(f, flags, buf, count, pos, False)
    data = f.pread(count, pos)
    if data:
        mem.write(buf, data)  # copy_to_user: EFAULT at a fault
    return len(data)


def _widths(pos: int, count: int, widest: int) -> list[int]:
    """The access sizes ``vfio_pci_core_do_io_rw`` (``widest`` 8) or
    ``vfio_config_do_rw`` (4) splits ``count`` bytes at ``pos`` into."""
    out = []
    while count:
        w = next(w for w in (8, 4, 2, 1) if w <= widest and count >= w and not pos % w)
        out.append(w)
        pos += w
        count -= w
    return out


def write_file(f: VfioFile, flags: int, buf: int, count: int, pos: int,
               mem: TargetMemory) -> int:
    """``vfs_write``: the bytes at ``buf`` written to the file at ``pos``."""
    _verify(f, flags, buf, count, pos, True)
    data = mem.read_partial(buf, count) if count else b""
    if len(data) == count:
        return f.pwrite(data, pos)
    # the buffer faults part-way: the whole accesses before the fault, then EFAULT
    if isinstance(f, VfioDeviceFile):
        config = pos >> u.VFIO_PCI_OFFSET_SHIFT == u.VFIO_PCI_CONFIG_REGION_INDEX
        done = 0
        for w in _widths(pos, count, 4 if config else 8):
            if done + w > len(data):
                break
            done += w
        if done:
            f.pwrite(data[:done], pos)
    raise BadAddress(f"copy_from_user of {count} bytes at {buf:#x} faulted after "
                     f"{len(data)}")


def eventq_rw(f: EventqFile, buf: int, count: int, mem: TargetMemory, *, write: bool) -> int:
    """``vfs_read``/``vfs_write`` of an iommufd event queue's fd (opened O_RDWR, position
    always 0): EFAULT past TASK_SIZE (``access_ok``), then the queue's own read or write,
    each record copied to or from ``buf`` as it goes (``copy_to_user`` /
    ``copy_from_user``: EFAULT at the record that faults)."""
    if buf + count > _TASK_SIZE:
        raise BadAddress(f"buffer {buf:#x}+{count:#x} is past TASK_SIZE")
    if write:
        return f.write_user(count, lambda offset, n: mem.read(buf + offset, n))
    return f.read_user(count, lambda offset, data: mem.write(buf + offset, data))
