"""A process's file table under hostile counts: RLIMIT_NOFILE bounds it (EMFILE)."""

from __future__ import annotations

import errno
import struct

from iommulab import Machine
from iommulab.vfio import uapi as u
from tests.helpers import expect_errno


def test_files_past_rlimit_nofile_are_emfile_and_leave_no_trace() -> None:
    """``get_unused_fd_flags`` fails with EMFILE once no fd is below RLIMIT_NOFILE: an
    open, a memfd_create and a VFIO_GROUP_GET_DEVICE_FD at the limit fail and leave
    nothing behind (the device opens again once an fd is free), so a loop of opens
    costs host memory only up to the limit; a forked child has the same limit."""
    m = Machine("x86-vtd", ram="64M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(nofile_limit=8)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    fds = [p.open("/dev/iommu") for _ in range(2)]
    last = p.memfd_create("last", 1 << 20)
    assert sorted(p.files) == list(range(3, 8))
    expect_errno(errno.EMFILE, p.open, "/dev/iommu")
    expect_errno(errno.EMFILE, p.memfd_create, "one more", 1 << 20)
    expect_errno(errno.EMFILE, p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:02.0\0")
    child = p.fork()
    expect_errno(errno.EMFILE, child.open, "/dev/iommu")
    child.exit()
    p.close(fds[0])
    dfd = p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:02.0\0")
    assert dfd == fds[0] and len(p.files) == 5
    p.close(last)
    p.exit()
    m.mem._check()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames - m.mem.iommu_pages
