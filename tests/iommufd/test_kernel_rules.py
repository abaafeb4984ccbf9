"""iommufd rules read off the kernel's source (audit rows 16-27 of issue 18, and the places
where 6.12 and 7.0 answer differently): each test names the kernel function it follows."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

import numpy as np
import pytest

from iommulab import Machine
from iommulab.iommufd import uapi as u
from iommulab.iommufd.selftest import OP_MD_CHECK_IOTLB
from iommulab.vfio import uapi as v

from ..failnth.sweep import site_errno
from ..helpers import expect_errno, make_host
from .selftest_lib import (
    BUFFER_SIZE,
    FIXED,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    RW,
    Selftest,
)

NEST_PARENT = u.IOMMU_HWPT_ALLOC_NEST_PARENT
DIRTY = u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
FAULT_ID_VALID = u.IOMMU_HWPT_FAULT_ID_VALID


# -- objects the driver holds (rows 16, 27) ----------------------------------------------------
def test_destroy_of_a_bound_device_is_ebusy() -> None:
    """``iommufd_device_bind``: "The calling driver is a user until iommufd_device_unbind()"
    (``refcount_inc(&idev->obj.users)``), so IOMMU_DESTROY of the device id is EBUSY and
    the device keeps working; unbind (closing the cdev) destroys it."""
    h, devs = make_host("x86-vtd", 1)
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    h.attach(cdev, ioas)
    buf = h.p.mmap(PAGE_SIZE, populate=True)
    iova = h.map(ioas, buf, PAGE_SIZE)
    expect_errno(errno.EBUSY, h.ioctl, h.iommufd, u.IOMMU_DESTROY, u.DESTROY.pack(8, devid))
    devs[0].dma_write(iova, b"still bound")
    assert h.p.read(buf, 11) == b"still bound"
    h.p.close(cdev)
    expect_errno(errno.ENOENT, h.ioctl, h.iommufd, u.IOMMU_DESTROY, u.DESTROY.pack(8, devid))
    h.p.exit()
    assert h.m.mem.pins.pins == 0


def test_a_bound_device_holds_the_iommufd_open() -> None:
    """``iommufd_device_bind`` takes ``iommufd_ctx_get`` for a real device: closing the
    /dev/iommu fd while a cdev is bound does not release the context (the device stays
    attached, its pages pinned); the unbind releases it."""
    h, devs = make_host("x86-vtd", 1)
    cdev, _ = h.bind(0)
    ioas = h.ioas()
    h.attach(cdev, ioas)
    buf = h.p.mmap(PAGE_SIZE, populate=True)
    iova = h.map(ioas, buf, PAGE_SIZE)
    h.p.close(h.iommufd)
    assert h.m.mem.pins.pins == 1
    devs[0].dma_write(iova, b"ctx alive")
    assert h.p.read(buf, 9) == b"ctx alive"
    h.p.close(cdev)
    assert h.m.mem.pins.pins == 0 and h.p.user.locked_vm == 0
    with pytest.raises(OSError):
        devs[0].dma_read(iova, 4)
    h.p.exit()


def test_destroy_of_a_mock_device_id_is_ebusy() -> None:
    """The selftest's mock device is bound the same way: its device id stays EBUSY until
    the selftest object (``stdev_id``) is destroyed."""
    t = Selftest()
    md = t.mock_domain(t.ioas_alloc())
    expect_errno(errno.EBUSY, t.destroy, md.idev_id)
    t.destroy(md.stdev_id)
    expect_errno(errno.ENOENT, t.destroy, md.idev_id)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_create_access_without_an_fd_is_enomem_and_makes_no_object(kernel: str) -> None:
    """``iommufd_test_create_access``: the fd is taken after the selftest access and its
    file and before ``iommufd_access_create``; any failure to get one is ENOMEM (not
    EMFILE), and no access object (nor its id) was made."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    t.p.nofile_limit = max(t.p.files) + 1  # every fd below the limit is taken
    expect_errno(errno.ENOMEM, t.create_access, ioas)
    t.p.nofile_limit = 1024
    assert t.ioas_alloc() == ioas + 1  # the failed call took no object id
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_nested_hwpt_lookups_are_iommufd_get_object_fail_points(kernel: str) -> None:
    """HWPT_INVALIDATE (``iommufd_get_hwpt_nested``, 7.0 ``iommufd_get_object`` of any
    kind) and the selftest's MD_CHECK_IOTLB (``get_md_pagetable_nested``) look the id up
    with ``iommufd_get_object``, whose ``iommufd_should_fail()`` is ENOENT."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    fail = t.m.mem.fail_nth
    data = t.p.mmap(PAGE_SIZE, populate=True)
    calls: list[Callable[[], object]] = [
        lambda: t.ioctl(u.IOMMU_HWPT_INVALIDATE,
                        u.HWPT_INVALIDATE.pack(32, ioas, data, 0, 8, 1, 0)),
        lambda: t.test_cmd(OP_MD_CHECK_IOTLB, ioas, struct.pack("<II", 0, 0)),
    ]
    for call in calls:
        fail.log = []
        with pytest.raises(OSError):
            call()
        assert fail.log == ["iommufd_should_fail(iommufd_get_object)"]
        fail.arm(1)
        expect_errno(errno.ENOENT, call)
        assert fail.fired == "iommufd_should_fail(iommufd_get_object)"
    fail.log = None
    t.close()


def test_destroy_of_an_access_is_ebusy_until_its_driver_destroys_it() -> None:
    """``__iommufd_access_create``: "The calling driver is a user until
    iommufd_access_destroy()": IOMMU_DESTROY of the access object's id is EBUSY; closing
    the selftest access fd destroys it."""
    t = Selftest()
    ioas = t.ioas_alloc()
    access = t.create_access(ioas)
    access_id = ioas + 1  # the next free object id
    expect_errno(errno.EBUSY, t.destroy, access_id)
    expect_errno(errno.EBUSY, t.destroy, ioas)  # the access still uses the IOAS
    t.p.close(access)
    expect_errno(errno.ENOENT, t.destroy, access_id)
    t.destroy(ioas)
    t.close()


# -- HWPT_ALLOC (rows 18-21) --------------------------------------------------------------------
def test_hwpt_alloc_on_a_missing_pt_id_is_einval() -> None:
    """``iommufd_hwpt_alloc``: ``if (IS_ERR(pt_obj)) { rc = -EINVAL; ...}``: no object at
    ``pt_id`` is EINVAL, not the lookup's ENOENT (a missing ``dev_id`` stays ENOENT)."""
    t = Selftest()
    md = t.mock_domain(t.ioas_alloc())
    expect_errno(errno.EINVAL, t.hwpt_alloc, md.idev_id, 999)
    expect_errno(errno.ENOENT, t.hwpt_alloc, 999, md.hwpt_id)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_hwpt_alloc_on_a_paging_hwpt_goes_the_nested_way(kernel: str) -> None:
    """``iommufd_hwpt_nested_alloc``: a paging HWPT as ``pt_id`` asks for a nested HWPT:
    without driver data EOPNOTSUPP; with data, a parent that is automatic or not a nest
    parent is EINVAL. A HWPT allocated with NEST_PARENT gets past those checks and the
    mock makes its nested domain (6.12 ``domain_alloc_user``, 7.0
    ``domain_alloc_nested``; tests/iommufd/test_nested.py)."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    data = t.p.mmap(PAGE_SIZE)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, md.idev_id, md.hwpt_id)
    plain = t.hwpt_alloc(md.idev_id, ioas)
    parent = t.hwpt_alloc(md.idev_id, ioas, NEST_PARENT)
    for pt in (md.hwpt_id, plain):
        expect_errno(errno.EINVAL, t.hwpt_alloc, md.idev_id, pt, 0, data_type=0xDEAD,
                     data_len=4, data_uptr=data)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, md.idev_id, parent, DIRTY,
                 data_type=0xDEAD, data_len=4, data_uptr=data)
    t.destroy(t.hwpt_alloc(md.idev_id, parent, 0, data_type=0xDEAD, data_len=4,
                           data_uptr=data))
    for hwpt in (plain, parent):
        t.destroy(hwpt)
    t.close()


def test_smmuv3_7_0_has_no_nested_op() -> None:
    """7.0's arm-smmu-v3 nests through a vIOMMU and has no ``domain_alloc_nested``: a
    nested HWPT_ALLOC on a nest parent is EOPNOTSUPP before the parent is looked at."""
    h, _ = make_host("arm64-smmuv3", 1, "7.0")
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    parent = h.hwpt(devid, ioas, NEST_PARENT)
    data = h.p.mmap(PAGE_SIZE)
    expect_errno(errno.EOPNOTSUPP, h.ioctl, h.iommufd, u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
        48, 0, devid, parent, 0, 0, 2, 16, data, 0, 0))
    h.p.close(cdev)
    h.p.exit()


@pytest.mark.parametrize(("platform", "kernel", "flags", "refusal"), [
    # 6.12 intel_iommu_domain_alloc_user: unknown flags, NEST_PARENT without nesting, then
    # user_data (with DIRTY_TRACKING without SSADS)
    ("x86-vtd", "6.12", NEST_PARENT, "need nesting"),
    ("x86-vtd", "6.12", 0, "driver data of type 0xdead"),
    # 7.0 intel_iommu_domain_alloc_paging_flags: user_data before anything else
    ("x86-vtd", "7.0", NEST_PARENT, "driver data of type 0xdead"),
    # arm_smmu_domain_alloc_user (6.12) and _paging_flags (7.0): unknown flags, then data
    ("arm64-smmuv3", "6.12", NEST_PARENT, "not supported"),
    ("arm64-smmuv3", "6.12", 0, "driver data of type 0xdead"),
    ("arm64-smmuv3", "7.0", NEST_PARENT, "driver data of type 0xdead"),
])
def test_driver_data_for_a_paging_hwpt_is_refused_by_the_driver(
        platform: str, kernel: str, flags: int, refusal: str) -> None:
    """``iommufd_hwpt_paging_alloc`` hands ``user_data`` to the driver's
    ``domain_alloc_user`` (6.12) / ``domain_alloc_paging_flags`` (7.0); VT-d and SMMUv3
    refuse it (EOPNOTSUPP) at their own place among their flag checks."""
    h, _ = make_host(platform, 1, kernel)
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    data = h.p.mmap(PAGE_SIZE)
    with pytest.raises(OSError, match=refusal) as e:
        h.ioctl(h.iommufd, u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
            48, flags, devid, ioas, 0, 0, 0xDEAD, 8, data, 0, 0))
    assert e.value.errno == errno.EOPNOTSUPP
    h.p.close(cdev)
    h.p.exit()


@pytest.mark.parametrize(("platform", "kernel", "err"), [
    ("x86-vtd", "6.12", errno.EINVAL), ("x86-vtd", "7.0", errno.EINVAL),
    ("arm64-smmuv3", "6.12", errno.EINVAL), ("arm64-smmuv3", "7.0", errno.EOPNOTSUPP),
])
def test_the_nested_op_is_the_drivers_for_its_kernel(platform: str, kernel: str,
                                                     err: int) -> None:
    """``iommufd_hwpt_nested_alloc`` refuses (EOPNOTSUPP) a driver without the nested op
    before it looks at the parent: 6.12's is ``domain_alloc_user``, which intel and
    arm-smmu-v3 have; 7.0's is ``domain_alloc_nested``, which arm-smmu-v3 lacks. With
    the op, a parent that is not a nest parent is EINVAL."""
    h, _ = make_host(platform, 1, kernel)
    cdev, devid = h.bind(0)
    parent = h.hwpt(devid, h.ioas())
    data = h.p.mmap(PAGE_SIZE)
    expect_errno(err, h.ioctl, h.iommufd, u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
        48, 0, devid, parent, 0, 0, 1, 16, data, 0, 0))
    h.p.close(cdev)
    h.p.exit()


def test_nest_parent_reaches_the_smmuv3_driver() -> None:
    """``iommufd_hwpt_paging_alloc`` hands the driver ``flags & ~IOMMU_HWPT_FAULT_ID_VALID``:
    arm-smmu-v3 (7.0) makes a NEST_PARENT HWPT a stage-2 domain and refuses NEST_PARENT
    with DIRTY_TRACKING (EOPNOTSUPP)."""
    h, _ = make_host("arm64-smmuv3", 1, "7.0")
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    parent = h.hwpt(devid, ioas, NEST_PARENT)
    hwpt = h.p.files[h.iommufd].ctx.objects[parent]  # type: ignore[attr-defined]
    assert hwpt.domain.stage == 2 and hwpt.nest_parent
    expect_errno(errno.EOPNOTSUPP, h.hwpt, devid, ioas, NEST_PARENT | DIRTY)
    h.p.close(cdev)
    h.p.exit()


def test_fault_id_valid_is_a_flag_from_7_0() -> None:
    """``iommufd_hwpt_paging_alloc`` valid_flags: 6.12 knows NEST_PARENT and DIRTY_TRACKING
    only (FAULT_ID_VALID is EOPNOTSUPP); 7.0 takes FAULT_ID_VALID, makes the HWPT, then
    ``iommufd_get_fault`` finds no fault object (ENOENT) and the HWPT goes again. With
    NEST_PARENT it is EOPNOTSUPP."""
    old = Selftest()
    md = old.mock_domain(old.ioas_alloc())
    expect_errno(errno.EOPNOTSUPP, old.hwpt_alloc, md.idev_id, 1, FAULT_ID_VALID, fault_id=77)
    old.close()
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    buf = t.p.mmap(PAGE_SIZE, populate=True)
    t.map(ioas, buf, PAGE_SIZE)
    pins = t.m.mem.pins.pins
    expect_errno(errno.ENOENT, t.hwpt_alloc, md.idev_id, ioas, FAULT_ID_VALID, fault_id=77)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, md.idev_id, ioas, FAULT_ID_VALID | NEST_PARENT,
                 fault_id=77)
    ioas_obj = t.p.files[t.fd].ctx.objects[ioas]  # type: ignore[attr-defined]
    assert len(ioas_obj.hwpts) == 1 and t.m.mem.pins.pins == pins
    assert t.hwpt_alloc(md.idev_id, ioas) == md.hwpt_id + 1  # the id was given back
    t.close()


def test_hwpt_alloc_pasid_flag_is_7_0() -> None:
    """IOMMU_HWPT_ALLOC_PASID is a valid paging flag in 7.0, unknown (EOPNOTSUPP) in
    6.12."""
    pasid = u.IOMMU_HWPT_ALLOC_PASID
    for kernel, ok in (("6.12", False), ("7.0", True)):
        t = Selftest(kernel=kernel)
        ioas = t.ioas_alloc()
        md = t.mock_domain(ioas)
        if ok:
            t.destroy(t.hwpt_alloc(md.idev_id, ioas, pasid))
        else:
            expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, md.idev_id, ioas, pasid)
        t.close()


# -- dirty tracking (rows 22-24) ----------------------------------------------------------------
def _dirty_setup(kernel: str) -> tuple[Selftest, int, int]:
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    if kernel == "7.0":  # as 7.0's iommufd_dirty_tracking fixture: a 4K leaf per page, so
        # the AMDv1 mock's leaves are the size the dirty bits are counted in
        t.option(u.IOMMU_OPTION_HUGE_PAGES, u.IOMMU_OPTION_OP_SET, ioas, 0)
    md = t.mock_domain(ioas)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, DIRTY)
    t.mock_domain_replace(md.stdev_id, hwpt)
    return t, ioas, hwpt


def test_set_dirty_tracking_ignores_reserved() -> None:
    """``iommufd_hwpt_set_dirty_tracking`` checks only ``flags`` (no test of
    ``__reserved`` in any version): a non-zero ``__reserved`` is accepted."""
    t, _, hwpt = _dirty_setup("6.12")
    t.ioctl(u.IOMMU_HWPT_SET_DIRTY_TRACKING, u.HWPT_SET_DIRTY_TRACKING.pack(16, 1, hwpt, 7))
    t.ioctl(u.IOMMU_HWPT_SET_DIRTY_TRACKING, u.HWPT_SET_DIRTY_TRACKING.pack(16, 0, hwpt, 7))
    expect_errno(errno.EOPNOTSUPP, t.ioctl, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
                 u.HWPT_SET_DIRTY_TRACKING.pack(16, 2, hwpt, 0))
    t.close()


def _two_areas_with_a_hole(kernel: str) -> tuple[Selftest, int, int]:
    t, ioas, hwpt = _dirty_setup(kernel)
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START + 2 * PAGE_SIZE)
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x01")  # dirty the first 2K of each area
    t.mock_dirty(hwpt, MOCK_APERTURE_START, MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits)
    t.mock_dirty(hwpt, MOCK_APERTURE_START + 2 * PAGE_SIZE, MOCK_PAGE_SIZE, MOCK_PAGE_SIZE,
                 bits)
    return t, hwpt, bits


def _bitmap(t: Selftest, hwpt: int, data: int, length: int, page_size: int = MOCK_PAGE_SIZE,
            iova: int = MOCK_APERTURE_START) -> list[int]:
    t.p.write(data, bytes(64))
    try:
        t.get_dirty_bitmap(hwpt, iova, length, page_size, data)
    finally:
        got = np.unpackbits(np.frombuffer(t.p.read(data, 64), dtype=np.uint8),
                            bitorder="little")
    return np.flatnonzero(got).tolist()


def test_dirty_bitmap_stops_at_a_hole_6_12_fails() -> None:
    """6.12 ``__iommu_read_and_clear_dirty``: the walk over contiguous areas stops at the
    hole and returns -EINVAL, which ``iova_bitmap_for_each`` and
    ``iommu_read_and_clear_dirty`` pass on; the first area's bits are already in the user
    bitmap and cleared in the IOMMU, the second area is neither reported nor cleared."""
    t, hwpt, data = _two_areas_with_a_hole("6.12")
    with pytest.raises(OSError) as err:
        _bitmap(t, hwpt, data, 3 * PAGE_SIZE)
    assert err.value.errno == errno.EINVAL
    assert np.flatnonzero(np.unpackbits(np.frombuffer(t.p.read(data, 8), dtype=np.uint8),
                                        bitorder="little")).tolist() == [0]
    assert _bitmap(t, hwpt, data, PAGE_SIZE) == []  # cleared
    assert _bitmap(t, hwpt, data, PAGE_SIZE, iova=MOCK_APERTURE_START + 2 * PAGE_SIZE) == [0]
    t.close()


def test_dirty_bitmap_stops_at_a_hole_7_0_succeeds() -> None:
    """7.0 ``iommu_read_and_clear_dirty`` ignores what ``iova_bitmap_for_each`` returns:
    the walk still stops at the hole, and the ioctl returns 0."""
    t, hwpt, data = _two_areas_with_a_hole("7.0")
    assert _bitmap(t, hwpt, data, 3 * PAGE_SIZE) == [0]
    assert _bitmap(t, hwpt, data, PAGE_SIZE, iova=MOCK_APERTURE_START + 2 * PAGE_SIZE) == [0]
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dirty_page_size_that_is_not_a_power_of_two(kernel: str) -> None:
    """``iommufd_check_iova_range`` tests alignment with ``page_size - 1`` as a mask and
    ``iova_bitmap_alloc`` takes ``__ffs(page_size)``: 0x6000 passes for a range whose ends
    fit the mask and reports at 8K granules."""
    t, ioas, hwpt = _dirty_setup(kernel)
    base = MOCK_APERTURE_START
    t.map_fixed(ioas, t.buffer, BUFFER_SIZE, base)
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x01\x01")  # 2K pages 0 and 8
    t.mock_dirty(hwpt, base, 16 * MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits)
    assert _bitmap(t, hwpt, bits + 64, 0x8000, 0x6000, base) == [0, 2]
    expect_errno(errno.EINVAL, _bitmap, t, hwpt, bits + 64, 0x4000, 0x6000, base)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dirty_bitmap_of_length_0(kernel: str) -> None:
    """``iommufd_check_iova_range``: 6.12 refuses a length of 0 (EINVAL) before anything;
    7.0 lets ``length - 1`` wrap: EOVERFLOW unless ``iova`` is 0, where the range is the
    whole space and nothing is mapped at 0 (0, no bits)."""
    t, _, hwpt = _dirty_setup(kernel)
    data = t.p.mmap(PAGE_SIZE)
    if kernel == "6.12":
        expect_errno(errno.EINVAL, t.get_dirty_bitmap, hwpt, MOCK_APERTURE_START, 0, 4096,
                     data)
        expect_errno(errno.EINVAL, t.get_dirty_bitmap, hwpt, 0, 0, 4096, data)
    else:
        expect_errno(errno.EOVERFLOW, t.get_dirty_bitmap, hwpt, MOCK_APERTURE_START, 0, 4096,
                     data)
        t.get_dirty_bitmap(hwpt, 0, 0, 4096, data)
    t.close()


def test_dirty_record_outside_the_bitmap_is_eproto_in_6_12() -> None:
    """6.12 ``iova_bitmap_set`` refuses a dirty range that does not fit the bitmap (the
    mock reports a dirty huge IO page whole, 1M, into a 64K bitmap): nothing of it is set
    and ``iova_bitmap_for_each`` returns EPROTO."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas, 1 << 1)  # MOCK_FLAGS_DEVICE_HUGE_IOVA
    hwpt = t.hwpt_alloc(md.idev_id, ioas, DIRTY)
    t.mock_domain_replace(md.stdev_id, hwpt)
    buf = t.p.mmap(2 << 20, "hugetlb-2M", populate=True)
    t.map_fixed(ioas, buf, 2 << 20, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x01")
    assert t.mock_dirty(hwpt, MOCK_APERTURE_START, MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits) == 1
    expect_errno(errno.EPROTO, _bitmap, t, hwpt, bits + 64, 0x10000, 0x1000)
    assert t.p.read(bits + 64, 8) == bytes(8)
    t.close()


def test_dirty_bitmap_into_memory_that_cannot_be_pinned_is_silent() -> None:
    """``iova_bitmap_set`` drops the bits of a user bitmap page ``pin_user_pages_fast``
    cannot pin for writing (``iova_bitmap_advance_to`` fails, the record returns) and the
    ioctl still succeeds: the dirty bits are read, cleared and lost."""
    t, _, hwpt = _dirty_setup("7.0")
    ioas = 1
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x01")
    t.mock_dirty(hwpt, MOCK_APERTURE_START, MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits)
    ro = t.p.mmap(PAGE_SIZE, prot="r")
    t.get_dirty_bitmap(hwpt, MOCK_APERTURE_START, PAGE_SIZE, MOCK_PAGE_SIZE, ro)
    assert _bitmap(t, hwpt, bits, PAGE_SIZE) == []
    t.close()


# -- accounting (rows 25, 26) -------------------------------------------------------------------
def test_dev_vfio_vfio_as_iommufd_accounts_to_the_mm() -> None:
    """``iommufd_fops_open``: when iommufd provides /dev/vfio/vfio, ``ictx->account_mode =
    IOPT_PAGES_ACCOUNT_MM`` (VFIO's accounting): IOMMU_OPTION RLIMIT_MODE reads 1."""
    m = Machine("x86-vtd", ram="256M")
    m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = True
    p = m.spawn_process(memlock_limit="16M")
    for path, mode in (("/dev/vfio/vfio", 1), ("/dev/iommu", 0)):
        fd = p.open(path)
        out = bytearray(u.OPTION.pack(24, u.IOMMU_OPTION_RLIMIT_MODE, u.IOMMU_OPTION_OP_GET,
                                      0, 0, 0))
        p.ioctl(fd, u.IOMMU_OPTION, out)
        assert u.OPTION.unpack(out)[5] == mode
        p.close(fd)
    p.exit()


def test_change_process_by_the_owner_charges_nothing() -> None:
    """``iommufd_ioas_change_process`` charges only pages for which ``need_charge_update``
    holds (USER: another user or mm): the owning process changing to itself with 8M
    pinned under a 12M limit succeeds and leaves the charge as it was."""
    t = Selftest(kernel="7.0", memlock=12 << 20, cap_ipc_lock=False)
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    mfd = t.p.memfd_create("guest", 8 << 20)
    t.map_file(ioas, mfd, 0, 8 << 20)
    assert t.p.user.locked_vm == 2048
    t.ioctl(u.IOMMU_IOAS_CHANGE_PROCESS, u.IOAS_CHANGE_PROCESS.pack(8, 0))
    assert (t.p.user.locked_vm, t.p.mm.pinned_vm) == (2048, 2048)
    t.close()


def test_change_process_charges_the_new_owner_once_per_pages() -> None:
    """The pages shared by two areas (IOAS_COPY) are charged to the new process once, and
    over its limit the whole change fails (ENOMEM) with the charges where they were. The
    new charge comes before the old one is released: a child of the same user needs room
    for both (16M here for 8M pinned)."""
    t = Selftest(kernel="7.0", memlock=16 << 20, cap_ipc_lock=False)
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    mfd = t.p.memfd_create("guest", 8 << 20)
    iova = t.map_file(ioas, mfd, 0, 8 << 20)
    t.copy(ioas, ioas, iova, 8 << 20, iova + (16 << 20))
    parent = t.p
    child = parent.fork()
    other = t.m.spawn_process(memlock_limit=4 << 20, uid=1001)
    other.files = dict(child.files)
    for f in other.files.values():
        f.refs += 1
    t.p = other
    expect_errno(errno.ENOMEM, t.ioctl, u.IOMMU_IOAS_CHANGE_PROCESS,
                 u.IOAS_CHANGE_PROCESS.pack(8, 0))
    assert (parent.user.locked_vm, parent.mm.pinned_vm, other.user.locked_vm) == (2048, 2048, 0)
    t.p = child
    t.ioctl(u.IOMMU_IOAS_CHANGE_PROCESS, u.IOAS_CHANGE_PROCESS.pack(8, 0))
    assert (parent.mm.pinned_vm, child.mm.pinned_vm, child.user.locked_vm) == (0, 2048, 2048)
    other.exit()
    child.exit()
    t.p = parent
    t.close()
    assert child.mm.pinned_vm == 0 and t.m.users[1000].locked_vm == 0


# -- the ioctl table -----------------------------------------------------------------------------
def test_ioas_unmap_of_nothing_is_enoent_and_unmap_all_of_nothing_is_0() -> None:
    """``iommufd_ioas_unmap``: ``if (!unmapped) rc = -ENOENT`` for a range, while
    (0, U64_MAX) of an empty IOAS succeeds with length 0."""
    t = Selftest()
    ioas = t.ioas_alloc()
    expect_errno(errno.ENOENT, t.unmap, ioas, MOCK_APERTURE_START, PAGE_SIZE)
    assert t.unmap(ioas, 0, (1 << 64) - 1) == 0
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START, RW | FIXED)
    assert t.unmap(ioas, MOCK_APERTURE_START, 2 * PAGE_SIZE) == PAGE_SIZE
    t.close()


def test_map_file_is_7_0() -> None:
    """IOMMU_IOAS_MAP_FILE exists in 7.0's table (a memfd maps) and not in 6.12's."""
    for kernel in ("6.12", "7.0"):
        t = Selftest(kernel=kernel)
        ioas = t.ioas_alloc()
        mfd = t.p.memfd_create("m", PAGE_SIZE)
        if kernel == "6.12":
            expect_errno(errno.ENOTTY, t.map_file, ioas, mfd, 0, PAGE_SIZE)
        else:
            assert t.map_file(ioas, mfd, 0, PAGE_SIZE)
        t.close()


def test_vfio_unmap_dma_writes_back_minsz_bytes() -> None:
    """``iommufd_vfio_unmap_dma`` copies back ``minsz`` bytes of the struct with ``size``
    set to what was unmapped (0 for an empty range), whatever ``argsz`` says beyond."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    t.ioctl(u.IOMMU_VFIO_IOAS, u.VFIO_IOAS.pack(12, ioas, u.IOMMU_VFIO_IOAS_SET, 0))
    t.p.ioctl(t.fd, v.VFIO_SET_IOMMU, v.VFIO_TYPE1v2_IOMMU)
    buf = bytearray(v.DMA_UNMAP.pack(32, 0, MOCK_APERTURE_START, PAGE_SIZE) + b"\xaa" * 8)
    t.p.ioctl(t.fd, v.VFIO_IOMMU_UNMAP_DMA, buf)
    assert struct.unpack_from("<IIQQ", buf) == (32, 0, MOCK_APERTURE_START, 0)
    assert buf[24:] == b"\xaa" * 8
    t.close()


# -- accesses ------------------------------------------------------------------------------------
def test_access_rw_copies_at_the_users_address_unless_slow() -> None:
    """``iopt_pages_rw_access``: for the caller's own user memory the copy is a
    ``copy_from_user`` at the address it was mapped from (the IOAS's pinned pages are
    not looked at: after a munmap it is EFAULT); with MOCK_ACCESS_RW_SLOW_PATH one page
    is pinned again at that address (``iopt_pages_rw_page``, EFAULT too) and more than
    one are read from the pages the IOAS holds."""
    t = Selftest()
    ioas = t.ioas_alloc()
    buf = t.p.mmap(2 * PAGE_SIZE, populate=True)
    t.p.write(buf, b"pinned bytes")
    t.mock_domain(ioas)
    t.map_fixed(ioas, buf, 2 * PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas)
    out = t.p.mmap(2 * PAGE_SIZE)
    t.p.munmap(buf, 2 * PAGE_SIZE)
    expect_errno(errno.EFAULT, t.access_rw, access, MOCK_APERTURE_START, out, 12)
    slow = 1 << 2  # MOCK_ACCESS_RW_SLOW_PATH: one page is pinned at the user's address
    expect_errno(errno.EFAULT, t.access_rw, access, MOCK_APERTURE_START, out, 12, slow)
    t.access_rw(access, MOCK_APERTURE_START, out, PAGE_SIZE + 1, slow)  # two: the pins
    assert t.p.read(out, 12) == b"pinned bytes"
    t.p.close(access)
    t.close()


def test_access_rw_copies_area_by_area_before_a_gap() -> None:
    """``iommufd_access_rw`` copies each contiguous area as it reaches it and finds the gap
    after them: a write over [area][gap] writes the area's bytes, then ENOENT."""
    t = Selftest()
    ioas = t.ioas_alloc()
    buf = t.p.mmap(PAGE_SIZE, populate=True)
    t.map_fixed(ioas, buf, PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas)
    src = t.p.mmap(2 * PAGE_SIZE)
    t.p.write(src, b"w" * 2 * PAGE_SIZE)
    expect_errno(errno.ENOENT, t.access_rw, access, MOCK_APERTURE_START, src, 2 * PAGE_SIZE,
                 1 | 1 << 2)  # write, slow path
    assert t.p.read(buf, PAGE_SIZE) == b"w" * PAGE_SIZE
    t.p.close(access)
    t.close()


def test_access_pin_checks_an_area_before_finding_the_gap() -> None:
    """``iommufd_access_pin_pages`` checks each area when it reaches it: a read-only area
    followed by a gap is EPERM for a write pin, not the gap's ENOENT."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START, u.IOMMU_IOAS_MAP_READABLE)
    access = t.create_access(ioas, 1)
    expect_errno(errno.EPERM, t.access_pages, access, MOCK_APERTURE_START, 2 * PAGE_SIZE,
                 t.buffer, 1)
    expect_errno(errno.ENOENT, t.access_pages, access, MOCK_APERTURE_START, 2 * PAGE_SIZE,
                 t.buffer)
    t.check_refs(t.buffer, PAGE_SIZE, 0)
    t.p.close(access)
    t.close()


# -- IOAS_MAP and IOAS_MAP_FILE argument order ----------------------------------------------------
def test_map_length_checks_before_or_after_the_wrap_check() -> None:
    """6.12 ``iopt_alloc_pages`` refuses a length past SIZE_MAX - PAGE_SIZE (EINVAL) before
    it tests ``uptr + length`` for a wrap (EOVERFLOW); 7.0's ``iopt_alloc_user_pages``
    tests the wrap first."""
    for kernel, err in (("6.12", errno.EINVAL), ("7.0", errno.EOVERFLOW)):
        t = Selftest(kernel=kernel)
        ioas = t.ioas_alloc()
        expect_errno(err, t.map, ioas, t.buffer, (1 << 64) - 2)
        t.close()


def test_map_file_checks_in_the_kernels_order() -> None:
    """``iopt_map_file_pages`` (7.0): a length of 0 is EINVAL and a wrapping range
    EOVERFLOW before the fd is looked at (EBADF); a range ending at the last byte of the
    address space does not wrap."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    expect_errno(errno.EINVAL, t.map_file, ioas, 99, 0, 0)
    expect_errno(errno.EOVERFLOW, t.map_file, ioas, 99, 1 << 63, 1 << 63 | 4096)
    expect_errno(errno.EBADF, t.map_file, ioas, 99, (1 << 64) - PAGE_SIZE, PAGE_SIZE)
    t.close()


def test_map_file_of_a_file_that_is_not_a_memfd() -> None:
    """7.0 ``iopt_alloc_file_pages`` takes any file: without a domain the map succeeds (the
    pages hold the file); attaching a device then needs the pages and
    ``memfd_pin_folios`` refuses (EINVAL)."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    other = t.p.open("/dev/iommu")
    t.map_file(ioas, other, 0, PAGE_SIZE, MOCK_APERTURE_START, RW | FIXED)
    t.p.close(other)
    assert t.p.files[t.fd].ctx.objects[ioas].iopt.areas()[0].pages.source.file.refs == 1  # type: ignore[attr-defined]
    expect_errno(errno.EINVAL, t.mock_domain, ioas)
    assert t.unmap(ioas, 0, (1 << 64) - 1) == PAGE_SIZE
    t.close()


def test_map_file_takes_the_file_only_once_its_pages_exist() -> None:
    """7.0 ``iopt_alloc_file_pages``: ``get_file`` comes after ``iopt_alloc_pages``
    succeeded, so a length past SIZE_MAX - PAGE_SIZE (EINVAL) leaves the memfd's and
    another file's reference counts as they were."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    mfd = t.p.memfd_create("guest", PAGE_SIZE)
    other = t.p.open("/dev/iommu")
    memfd, other_file = t.p.files[mfd].memfd, t.p.files[other]  # type: ignore[attr-defined]
    for fd in (mfd, other):
        expect_errno(errno.EINVAL, t.map_file, ioas, fd, 0, (1 << 64) - PAGE_SIZE)
    assert memfd.refs == 1 and other_file.refs == 1
    t.close()


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "other-file"])
def test_map_file_fail_nth_leaves_the_file_references_as_they_were(memfd: bool) -> None:
    """Every allocation point of an IOAS_MAP_FILE (7.0) failed in turn, the kernel's
    fail_nth sweep: the point's errno, nothing mapped or pinned, and the file's reference
    count as before the call (the pages take theirs only once ``iopt_alloc_pages`` succeeded and
    drop it when the map fails); the map then succeeds and holds one reference."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    if memfd:  # a domain to pin and map into: the pin, shmem and map allocations
        t.mock_domain(ioas)
        fd = t.p.memfd_create("guest", 4 * PAGE_SIZE)
    else:  # a file that cannot be pinned maps into an IOAS without a domain
        fd = t.p.open("/dev/iommu")
    f = t.p.files[fd]
    refs = (lambda: f.memfd.refs) if memfd else (lambda: f.refs)  # type: ignore[attr-defined]
    fail_nth = t.m.mem.fail_nth
    iopt = t.p.files[t.fd].ctx.objects[ioas].iopt  # type: ignore[attr-defined]
    failures = 0
    for nth in range(1, 100):
        fail_nth.arm(nth)
        try:
            t.map_file(ioas, fd, 0, 4 * PAGE_SIZE, MOCK_APERTURE_START, RW | FIXED)
        except OSError as e:
            assert fail_nth.fired is not None and e.errno == site_errno(fail_nth.fired)
            assert refs() == 1 and not iopt.areas() and t.m.mem.pins.pins == 0
            failures += 1
            continue
        finally:
            fail_nth.disarm()
        if not fail_nth.triggered:
            break
        assert refs() == 2  # a failure the kernel absorbs: mapped all the same
        assert t.unmap(ioas, 0, (1 << 64) - 1) == 4 * PAGE_SIZE
    assert failures >= 2 and refs() == 2
    assert t.unmap(ioas, 0, (1 << 64) - 1) == 4 * PAGE_SIZE
    assert refs() == 1
    t.close()


def test_allow_iovas_reads_and_checks_one_range_at_a_time() -> None:
    """``iommufd_ioas_load_iovas`` copies a range, checks it (``start >= last`` or an
    overlap with an earlier one: EINVAL), then copies the next: a bad first range is
    EINVAL even when the second cannot be read (EFAULT only for a readable bad-free
    prefix)."""
    t = Selftest()
    ioas = t.ioas_alloc()
    arr = t.p.mmap(2 * PAGE_SIZE)
    t.p.munmap(arr + PAGE_SIZE, PAGE_SIZE)
    first = arr + PAGE_SIZE - 16  # range 0 at the end of the page, range 1 unmapped

    def allow(start: int, last: int) -> None:
        t.p.write(first, u.IOVA_RANGE.pack(start, last))
        t.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, u.IOAS_ALLOW_IOVAS.pack(24, ioas, 2, 0, first))

    expect_errno(errno.EINVAL, allow, PAGE_SIZE, PAGE_SIZE)  # start >= last
    expect_errno(errno.EFAULT, allow, PAGE_SIZE, 2 * PAGE_SIZE - 1)
    t.close()


def test_allow_iovas_allocates_a_node_per_range_once_it_is_checked() -> None:
    """``iommufd_ioas_load_iovas`` allocates each range's node (``kzalloc``, a fail_nth
    point) after checking it and before reading the next: failing the nth allocation is
    ENOMEM with the allowed ranges as they were, and a bad second range is not reached
    when the first range's node cannot be had."""
    t = Selftest()
    ioas = t.ioas_alloc()
    space = t.p.files[t.fd].ctx.objects[ioas].iopt.space  # type: ignore[attr-defined]
    t.allow_iovas(ioas, [(PAGE_SIZE, 2 * PAGE_SIZE - 1)])
    arr = t.p.mmap(PAGE_SIZE, populate=True)
    fail_nth = t.m.mem.fail_nth

    def allow(ranges: list[tuple[int, int]], nth: int) -> None:
        for i, r in enumerate(ranges):
            t.p.write(arr + 16 * i, u.IOVA_RANGE.pack(*r))
        fail_nth.arm(nth)
        try:
            t.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, u.IOAS_ALLOW_IOVAS.pack(24, ioas, len(ranges),
                                                                     0, arr))
        finally:
            fail_nth.disarm()

    ranges = [(4 * PAGE_SIZE, 5 * PAGE_SIZE - 1), (8 * PAGE_SIZE, 9 * PAGE_SIZE - 1)]
    expect_errno(errno.ENOENT, allow, ranges, 1)  # iommufd_get_ioas's should_fail point
    for nth in (2, 3):
        expect_errno(errno.ENOMEM, allow, ranges, nth)
        assert fail_nth.triggered and space.allowed == [(PAGE_SIZE, 2 * PAGE_SIZE - 1)]
    bad = [ranges[0], (PAGE_SIZE, PAGE_SIZE)]
    expect_errno(errno.ENOMEM, allow, bad, 2)
    expect_errno(errno.EINVAL, allow, bad, 3)
    assert not fail_nth.triggered
    allow(ranges, 4)
    assert not fail_nth.triggered and space.allowed == ranges
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_hwpt_invalidate_without_a_nested_hwpt(kernel: str) -> None:
    """``iommufd_hwpt_invalidate`` (in both releases' tables): EOPNOTSUPP for
    ``__reserved``, EINVAL for entries without data (6.12 also for an entry longer than
    a page); the target must be a nested HWPT (7.0: or a vIOMMU): 6.12 answers ENOENT
    for a paging HWPT, 7.0 EINVAL; no object is ENOENT. ``entry_num`` comes back 0."""
    t = Selftest(kernel=kernel)
    md = t.mock_domain(t.ioas_alloc())
    data = t.p.mmap(PAGE_SIZE)

    def invalidate(hwpt: int, entry_len: int, num: int, rsvd: int = 0) -> bytearray:
        buf = bytearray(u.HWPT_INVALIDATE.pack(32, hwpt, data, 0xDEAD, entry_len, num, rsvd))
        with pytest.raises(OSError) as err:
            t.p.ioctl(t.fd, u.IOMMU_HWPT_INVALIDATE, buf)
        buf[:0] = (err.value.errno or 0).to_bytes(4, "little")
        return buf

    def errno_of(buf: bytearray) -> int:
        return int.from_bytes(buf[:4], "little")

    assert errno_of(invalidate(md.hwpt_id, 8, 1, rsvd=1)) == errno.EOPNOTSUPP
    assert errno_of(invalidate(md.hwpt_id, 0, 1)) == errno.EINVAL
    long_entry = errno_of(invalidate(99, 2 * PAGE_SIZE, 1))
    assert long_entry == (errno.EINVAL if kernel == "6.12" else errno.ENOENT)
    out = invalidate(md.hwpt_id, 8, 3)
    assert errno_of(out) == (errno.ENOENT if kernel == "6.12" else errno.EINVAL)
    assert u.HWPT_INVALIDATE.unpack(out[4:])[5] == 0  # entry_num: none done
    t.close()
