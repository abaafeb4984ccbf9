"""Mappings made by another process: the selftest's iommufd_ioas fork_gone and fork_present
(reference §2.17 cases 24, 25) on every iommufd_ioas variant, and change_process/basic
(case 6) in its three account modes. The selftest's buffer is MAP_SHARED | MAP_ANONYMOUS,
so the child maps the same pages the parent reads through the access."""

from __future__ import annotations

import errno

import pytest

from iommulab.iommufd import uapi as u

from ..helpers import expect_errno
from .selftest_lib import (
    BUFFER_SIZE,
    MOCK_APERTURE_START,
    PAGE_SIZE,
    IoasFix,
    Selftest,
    access_rw_sweep,
)


def _shared_buffer(t: Selftest) -> int:
    buf = t.p.mmap(BUFFER_SIZE, shared=True, populate=True)
    t.p.write(buf, bytes(range(256)) * (BUFFER_SIZE // 256))
    return buf


def test_fork_gone(f: IoasFix) -> None:
    t = f.t
    buf = _shared_buffer(t)
    access = t.create_access(f.ioas)
    parent, child = t.p, t.p.fork()
    t.p = child  # the child maps with its own mm, then exits
    t.map_fixed(f.ioas, buf, BUFFER_SIZE, MOCK_APERTURE_START)
    t.p = parent
    child.exit()
    if f.domains:
        # everything was pinned within the fork: the new domain copies from the old one
        t.mock_domain(f.ioas)
        access_rw_sweep(t, access, MOCK_APERTURE_START, buf)
    else:
        # pinning now would need the child's mm, which is gone
        expect_errno(errno.EFAULT, t.mock_domain, f.ioas)
    t.p.close(access)
    assert child.mm.pinned_vm == (BUFFER_SIZE // PAGE_SIZE if f.domains else 0)


def test_fork_present(f: IoasFix) -> None:
    t = f.t
    buf = _shared_buffer(t)
    access = t.create_access(f.ioas)
    parent, child = t.p, t.p.fork()
    t.p = child
    t.map_fixed(f.ioas, buf, BUFFER_SIZE, MOCK_APERTURE_START)
    t.p = parent
    t.mock_domain(f.ioas)  # reads the pages from the remote process
    access_rw_sweep(t, access, MOCK_APERTURE_START, buf)
    assert child.mm.pinned_vm == BUFFER_SIZE // PAGE_SIZE
    assert parent.mm.pinned_vm == 0
    t.p.close(access)
    child.exit()


@pytest.mark.parametrize("mode", ["none", "user", "mm"])
def test_change_process_basic(mode: str) -> None:
    """Only file-backed maps may change process; in a child the pinned pages' charge moves
    from the parent's mm (VmPin, and VmLck in MM mode) to the child's."""
    t = Selftest(cap_ipc_lock=mode == "none", kernel="7.0")  # CHANGE_PROCESS, MAP_FILE
    if mode == "mm":
        t.option(u.IOMMU_OPTION_RLIMIT_MODE, u.IOMMU_OPTION_OP_SET, val=1)
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)

    def change() -> None:
        t.ioctl(u.IOMMU_IOAS_CHANGE_PROCESS, u.IOAS_CHANGE_PROCESS.pack(8, 0))

    iova = t.map(ioas, t.buffer, PAGE_SIZE)
    expect_errno(errno.EINVAL, change)  # a map of user memory cannot move
    t.unmap(ioas, iova, PAGE_SIZE)
    mfd = t.p.memfd_create("change", PAGE_SIZE)
    t.map_file(ioas, mfd, 0, PAGE_SIZE)
    change()  # in the same process: nothing moves
    parent = t.p
    assert (parent.mm.pinned_vm, parent.mm.locked_vm) == (1, 1 if mode == "mm" else 0)
    child = parent.fork()
    t.p = child
    change()
    t.p = parent
    if mode == "none":  # need_charge_update: never for NONE, yet the pages change mm
        assert (parent.mm.pinned_vm, child.mm.pinned_vm) == (1, 0)
        child.exit()
        parent.exit()  # the unpin is taken from the child's mm, which was never charged
        assert (parent.mm.pinned_vm, child.mm.pinned_vm) == (1, -1)
        assert t.m.mem.pins.pins == 0
        return
    assert (parent.mm.pinned_vm, parent.mm.locked_vm) == (0, 0)
    assert (child.mm.pinned_vm, child.mm.locked_vm) == (1, 1 if mode == "mm" else 0)
    child.exit()
    t.close()
    assert child.mm.pinned_vm == 0 and child.mm.locked_vm == 0
