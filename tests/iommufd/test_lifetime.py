"""Object lifetimes under hostile use (issue 19): an object is destroyed only by whoever
holds it, ids belong to one ``iommufd_ctx``, an access works in its own context whichever
/dev/iommu a command comes through, and closing everything releases everything."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.iommufd import uapi as u
from iommulab.iommufd.file import IommufdFile
from iommulab.iommufd.objects import Ioas, IommufdCtx
from iommulab.iommufd.selftest import OP_ACCESS_REPLACE_IOAS, TEST_CMD
from iommulab.vfio import uapi as v

from ..helpers import Host, expect_errno, make_host
from .selftest_lib import MOCK_APERTURE_START, PAGE_SIZE, RW, Selftest


def _ctx(t: Selftest, fd: int) -> IommufdCtx:
    f = t.p.files[fd]
    assert isinstance(f, IommufdFile)
    return f.ctx


def _ioas_alloc(t: Selftest, fd: int) -> int:
    out = bytearray(u.IOAS_ALLOC.pack(12, 0, 0))
    t.p.ioctl(fd, u.IOMMU_IOAS_ALLOC, out)
    return int(u.IOAS_ALLOC.unpack(out)[2])


def _replace_through(t: Selftest, fd: int, access: int, ioas: int) -> None:
    """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS sent through ``fd``."""
    t.p.ioctl(fd, u.IOMMU_TEST_CMD, bytearray(TEST_CMD.pack(
        72, OP_ACCESS_REPLACE_IOAS, access, 0, struct.pack("<I", ioas).ljust(48, b"\0"), 0)))


def _destroy(t: Selftest, fd: int, id: int) -> None:
    t.p.ioctl(fd, u.IOMMU_DESTROY, bytearray(u.DESTROY.pack(8, id)))


def test_access_replace_looks_the_ioas_up_in_the_access_context() -> None:
    """``iommufd_access_change_ioas_id`` looks ``ioas_id`` up in ``access->ictx``, the
    context the access was made in, not in the file the command came through: an id only
    the other file has is ENOENT, and that file's IOAS stays free to destroy while the
    access's own stays busy. Closing everything releases everything."""
    t = Selftest()
    ioas = t.ioas_alloc()  # id 1 in the access's context
    other = t.p.open("/dev/iommu")
    others = [_ioas_alloc(t, other) for _ in range(2)]  # ids 1 and 2 in the other one
    access = t.create_access(ioas, 1)
    expect_errno(errno.ENOENT, _replace_through, t, other, access, others[1])
    for id in reversed(others):
        _destroy(t, other, id)  # nothing of the access's holds them
    expect_errno(errno.EBUSY, t.destroy, ioas)
    for fd in (t.fd, other):
        _ctx(t, fd)._check()
    t.close()


def test_access_replace_through_another_file_moves_within_the_access_context() -> None:
    """The same command through the other file with an id of the access's context moves
    the access there (its pinned items unpinned on the way), even though the other file
    has no object of that id."""
    t = Selftest()
    first, second = t.ioas_alloc(), t.ioas_alloc()
    other = t.p.open("/dev/iommu")
    _ioas_alloc(t, other)  # id 1 only
    for ioas in (first, second):
        t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(first, 1)
    t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    assert t.m.mem.pins.pins == 1
    _replace_through(t, other, access, second)
    assert t.m.mem.pins.pins == 0
    t.destroy(first)  # the access left it
    expect_errno(errno.EBUSY, t.destroy, second)
    t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    for fd in (t.fd, other):
        _ctx(t, fd)._check()
    t.close()


def test_closing_the_other_file_first_after_a_replace_through_it() -> None:
    """The file a replace came through holds nothing of the access: closing it first,
    then the access's file and the access, leaves no object, pin or warning."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    other = t.p.open("/dev/iommu")
    _ioas_alloc(t, other)
    access = t.create_access(ioas, 1)
    _replace_through(t, other, access, ioas)  # the same IOAS: nothing to do
    t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    ctxs = [_ctx(t, fd) for fd in (other, t.fd)]
    for fd in (other, t.fd, access):
        t.p.close(fd)
    assert all(not c.objects and not c.warnings for c in ctxs)
    t.close()


def test_destroy_of_every_held_object_is_ebusy_and_close_releases_all() -> None:
    """IOMMU_DESTROY of each object something holds (a cdev's device, its automatic HWPT,
    the IOAS under it) is EBUSY and changes nothing; closing the cdev then the
    /dev/iommu fd destroys them all, with every invariant holding after each step."""
    h, devs = make_host("x86-vtd", 1)
    ctx = h.p.files[h.iommufd].ctx  # type: ignore[attr-defined]
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    hwpt = h.attach(cdev, ioas)
    buf = h.p.mmap(PAGE_SIZE, populate=True)
    iova = h.map(ioas, buf, PAGE_SIZE)
    for id in (devid, hwpt, ioas):
        expect_errno(errno.EBUSY, h.ioctl, h.iommufd, u.IOMMU_DESTROY, u.DESTROY.pack(8, id))
        ctx._check()
    devs[0].dma_write(iova, b"bound")
    h.p.close(cdev)
    ctx._check()
    assert list(ctx.objects) == [ioas]
    h.p.close(h.iommufd)
    assert not ctx.objects and not ctx.warnings and h.m.mem.pins.pins == 0


def test_unbind_removes_the_object_it_holds_not_the_id() -> None:
    """``iommufd_object_remove`` with the object to destroy (``iommufd_device_unbind``,
    ``iommufd_access_destroy``, an automatic HWPT's put) WARNs and removes nothing when
    the table holds another object at that id: closing the cdev whose device object is
    no longer filed under its id (a model bug would be needed for that) leaves the
    object now at the id alone."""
    h, _ = make_host("x86-vtd", 1)
    ctx = h.p.files[h.iommufd].ctx  # type: ignore[attr-defined]
    cdev, devid = h.bind(0)
    idev = ctx.objects.pop(devid)  # lost from the table, as only a bug could do
    ioas = h.ioas()
    assert ioas == devid  # the lowest free id
    h.p.close(cdev)
    assert isinstance(ctx.objects.get(ioas), Ioas)
    assert ctx.warnings["iommufd_object_destroy_user: object 1 is not in the table"] == 1
    assert idev.users == 0
    h.p.exit()


def test_a_driver_that_keeps_pins_makes_close_warn_not_fail() -> None:
    """An in-kernel access whose ``unmap`` op does not unpin keeps its area: destroying
    the IOAS at close finds it busy (``iopt_unmap_all`` EDEADLOCK), which
    ``iommufd_ioas_destroy`` WARNs about and goes on; close itself never fails."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    ctx = _ctx(t, t.fd)
    access = ctx.access_create(lambda iova, length: None, needs_pin=True)
    ctx.access_attach(access, ioas)
    ctx.access_pin(access, MOCK_APERTURE_START, PAGE_SIZE, write=False)
    iopt = ctx.objects[ioas].iopt  # type: ignore[attr-defined]
    ctx.access_destroy(access)
    t.p.close(t.fd)
    assert ctx.warnings["iommufd_ioas_destroy: iopt_unmap_all: EDEADLOCK"] == 1
    assert not ctx.objects
    area = iopt.areas()[0]  # what the kernel leaks; the test gives it back
    area.pages.remove_access(area.index, area.last_index)
    area.num_accesses = 0
    iopt.unmap_all()
    t.close()



# -- reference cycles through IOAS_MAP_FILE (7.0) ----------------------------------------------
def _map_file(h: Host, fd: int, ioas: int) -> None:
    """IOMMU_IOAS_MAP_FILE of a page of ``fd`` (any file) into ``ioas``, at an IOVA the
    kernel picks: with no domain in the IOAS nothing is pinned, the pages hold the
    file."""
    h.ioctl(h.iommufd, u.IOMMU_IOAS_MAP_FILE,
            u.IOAS_MAP_FILE.pack(40, RW, ioas, fd, 0, PAGE_SIZE, 0))


def _host() -> tuple[Host, IommufdFile]:
    h, _ = make_host("x86-vtd", 1, kernel="7.0")
    f = h.p.files[h.iommufd]
    assert isinstance(f, IommufdFile)
    return h, f


def test_map_file_of_the_iommufd_itself_is_released_with_its_last_fd() -> None:
    """7.0 ``iopt_alloc_file_pages`` takes any file, the iommufd itself too: its pages then
    hold its own file, which the kernel never releases after the process closes it (a
    leak the model does not keep, see ``collect_cycles``). While the fd is open nothing
    changes; closing it releases the context and everything in it."""
    h, f = _host()
    ioas = h.ioas()
    _map_file(h, h.iommufd, ioas)
    assert f.refs == 2 and ioas in f.ctx.objects
    h.p.close(h.iommufd)
    assert f.refs == 0 and not f.ctx.objects and not f.ctx.warnings


@pytest.mark.parametrize("iommufd_first", [True, False], ids=["iommufd-first", "cdev-first"])
def test_map_file_of_a_cdev_bound_to_it_is_released_when_both_are_closed(
        iommufd_first: bool) -> None:
    """The pages of an IOAS holding the fd of a cdev bound to the same iommufd (the
    device holds the iommufd, the pages the cdev): closing one fd changes nothing,
    closing the other releases both (the device unbound, its group free to open)."""
    h, f = _host()
    cdev, _ = h.bind(0)
    dma_ioas, file_ioas = h.ioas(), h.ioas()
    h.attach(cdev, dma_ioas)
    _map_file(h, cdev, file_ioas)
    order = [h.iommufd, cdev] if iommufd_first else [cdev, h.iommufd]
    h.p.close(order[0])
    vdev = h.m.vfio_devices["0000:00:02.0"]
    assert vdev.cdev_opened and len(f.ctx.objects) == 4  # 2 IOASes, a HWPT, the device
    h.p.close(order[1])
    assert not vdev.cdev_opened and vdev.open_count == 0
    assert f.refs == 0 and not f.ctx.objects and not f.ctx.warnings
    group = h.p.open(f"/dev/vfio/{h.m.devices['0000:00:02.0'].iommu_group}")
    h.p.close(group)
    h.p.exit()


def test_two_iommufds_holding_each_other_are_released() -> None:
    """Each iommufd's IOAS maps the other's fd: closing both releases both."""
    h, f = _host()
    other_fd = h.p.open("/dev/iommu")
    other = h.p.files[other_fd]
    assert isinstance(other, IommufdFile)
    _map_file(h, other_fd, h.ioas())
    h2 = Host(h.m, h.p, other_fd)
    _map_file(h2, h.iommufd, h2.ioas())
    h.p.close(other_fd)
    assert other.refs == 1 and other.ctx.objects  # still held by the first one's pages
    h.p.close(h.iommufd)
    assert f.refs == other.refs == 0 and not f.ctx.objects and not other.ctx.objects


def test_map_file_of_a_selftest_access_of_the_same_iommufd() -> None:
    """A selftest access holds its iommufd (``iommufd_ctx_get``); an IOAS whose pages hold
    the access's fd closes the cycle: closing both fds releases the access, its IOAS
    and the context."""
    t = Selftest(kernel="7.0")
    ioas, other = t.ioas_alloc(), t.ioas_alloc()
    access = t.create_access(ioas)
    t.map_file(other, access, 0, PAGE_SIZE)
    ctx = _ctx(t, t.fd)
    t.p.close(access)
    assert len(ctx.objects) == 3  # the access stays while the pages hold its fd
    t.p.close(t.fd)
    assert not ctx.objects and not ctx.warnings
    t.close()


def test_a_cycle_held_from_outside_stays() -> None:
    """A group set to the iommufd whose pages hold the group's fd, and a child process
    that inherited the iommufd fd: the parent closing its fds releases nothing while
    the child's fd holds the iommufd; the child's exit releases it all."""
    h, f = _host()
    group_path = f"/dev/vfio/{h.m.devices['0000:00:02.0'].iommu_group}"
    group = h.p.open(group_path)
    h.p.ioctl(group, v.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", h.iommufd)))
    _map_file(h, group, h.ioas())
    child = h.p.fork()
    h.p.exit()
    assert f.refs == 2 and f.ctx.objects  # the child's fd and the group's
    expect_errno(errno.EBUSY, child.open, group_path)  # still open in the cycle
    child.exit()
    assert f.refs == 0 and not f.ctx.objects
    child.close(child.open(group_path))


def test_map_file_of_a_group_device_fd_bound_through_the_iommufd() -> None:
    """A group set to the iommufd binds its device to it on the first device fd; an IOAS
    whose pages hold that device fd closes a cycle (the binding holds the iommufd):
    closing the group, device and iommufd fds releases them all."""
    h, f = _host()
    bdf = "0000:00:02.0"
    group = h.p.open(f"/dev/vfio/{h.m.devices[bdf].iommu_group}")
    h.p.ioctl(group, v.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", h.iommufd)))
    device = h.p.ioctl(group, v.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
    _map_file(h, device, h.ioas())
    for fd in (group, device, h.iommufd):
        h.p.close(fd)
    vdev = h.m.vfio_devices[bdf]
    assert vdev.open_count == 0 and vdev.idev is None
    assert f.refs == 0 and not f.ctx.objects and not f.ctx.warnings
