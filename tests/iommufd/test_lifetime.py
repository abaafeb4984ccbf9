"""Object lifetimes under hostile use (issue 19): an object is destroyed only by whoever
holds it, ids belong to one ``iommufd_ctx``, an access works in its own context whichever
/dev/iommu a command comes through, and closing everything releases everything."""

from __future__ import annotations

import errno
import struct

from iommulab.iommufd import uapi as u
from iommulab.iommufd.file import IommufdFile
from iommulab.iommufd.objects import Ioas, IommufdCtx
from iommulab.iommufd.selftest import OP_ACCESS_REPLACE_IOAS, TEST_CMD

from ..helpers import expect_errno, make_host
from .selftest_lib import MOCK_APERTURE_START, PAGE_SIZE, Selftest


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

