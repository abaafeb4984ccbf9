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
    dfd = p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0\0"))
    assert dfd == fds[0] and len(p.files) == 5
    p.close(last)
    p.exit()
    m.mem._check()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames - m.mem.iommu_pages


def test_the_fd_is_taken_before_the_path_or_the_device() -> None:
    """``do_sys_openat2`` and ``vfio_group_ioctl_get_device_fd`` take the fd
    (``get_unused_fd_flags``) before they look the path up or open the device: at the
    limit a path that does not exist, a group already open and a device of the group
    are all EMFILE, and the device is not opened."""
    m = Machine("x86-vtd", ram="64M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(nofile_limit=6)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    expect_errno(errno.ENOENT, p.open, "/dev/vfio/nothing")
    expect_errno(errno.EBUSY, p.open, f"/dev/vfio/{dev.iommu_group}")
    p.open("/dev/iommu")
    expect_errno(errno.EMFILE, p.open, "/dev/vfio/nothing")
    expect_errno(errno.EMFILE, p.open, f"/dev/vfio/{dev.iommu_group}")
    expect_errno(errno.EMFILE, p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:02.0\0")
    vdev = m.vfio_devices.get(dev.bdf)
    assert vdev is None or vdev.open_count == 0
    p.exit()


def test_the_fd_table_grows_by_powers_of_two_and_fork_sizes_the_copy() -> None:
    """The table embedded in ``files_struct`` holds 64 fds; fd 64 makes ``expand_files``
    build one of 128 (``alloc_fdtable``: the smallest power of two that holds it), which
    stays when the fd is closed. A child's table (``dup_fd``) is sized by the parent's
    open fds in whole words of 64: 128 while fd 64 is open, 64 once it is closed."""
    m = Machine("mock", ram="64M")
    p = m.spawn_process()
    fds = [p.memfd_create(f"f{i}") for i in range(61)]
    assert fds[-1] == 63 and p.max_fds == 64
    last = p.memfd_create("fd 64")
    assert last == 64 and p.max_fds == 128
    child = p.fork()
    assert child.max_fds == 128
    child.exit()
    p.close(last)
    assert p.max_fds == 128
    child = p.fork()
    assert child.max_fds == 64
    child.exit()
    p.exit()
