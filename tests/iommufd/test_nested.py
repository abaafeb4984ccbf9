"""Nested HWPTs on the mock (Linux 6.12): ``iommufd_hwpt_nested_alloc``,
``mock_domain_alloc_user`` with a parent, ``iommufd_hwpt_invalidate`` through
``mock_domain_cache_invalidate_user`` and MD_CHECK_IOTLB, walked as the selftest's
``alloc_hwpt_nested`` does (tools/testing/selftests/iommu/iommufd.c), less its fault
queue and replace steps. docs/design/nesting.md has the rules."""

from __future__ import annotations

import errno
import struct

from iommulab.iommufd import uapi as u

from ..helpers import expect_errno
from .selftest_lib import IOMMU_HWPT_DATA_SELFTEST, PAGE_SIZE, Selftest
from .viommu_lib import invalidate

OP_MD_CHECK_IOTLB = 14  # iommufd_test.h
IOTLB_DEFAULT = 0xBADBEEF  # IOMMU_TEST_IOTLB_DEFAULT
INV_SELFTEST, INV_SELFTEST_INVALID = 0xDEADBEEF, 0xDADBEEF
INV_FLAG_ALL = 1 << 0
IOTLB_ID_MAX = 3
NEST_PARENT, FAULT_ID_VALID = u.IOMMU_HWPT_ALLOC_NEST_PARENT, u.IOMMU_HWPT_FAULT_ID_VALID
DATA = struct.pack("<I", IOTLB_DEFAULT)  # struct iommu_hwpt_selftest


def _nested(t: Selftest, dev: int, parent: int, flags: int = 0,
            data_type: int = IOMMU_HWPT_DATA_SELFTEST, data_len: int | None = None) -> int:
    return t.hwpt_alloc_data(dev, parent, flags, data_type, DATA, data_len)


def _check_iotlb(t: Selftest, hwpt: int, values: tuple[int, int, int, int]) -> None:
    for i, want in enumerate(values):
        t.test_cmd(OP_MD_CHECK_IOTLB, hwpt, struct.pack("<II", i, want))
        expect_errno(errno.EINVAL, t.test_cmd, OP_MD_CHECK_IOTLB, hwpt,
                     struct.pack("<II", i, want ^ 1))


def _invalidate(t: Selftest, hwpt: int, reqs: list[tuple[int, int]], *,
                data_type: int = INV_SELFTEST, entry_len: int = 8, num: int | None = None,
                null: bool = False) -> tuple[int, int]:
    """HWPT_INVALIDATE of ``reqs`` (flags, iotlb_id): (errno or 0, entry_num out)."""
    return invalidate(t, hwpt, b"".join(struct.pack("<II", f, i) for f, i in reqs),
                      data_type=data_type, entry_len=entry_len,
                      num=len(reqs) if num is None else num, null=null)


def _setup() -> tuple[Selftest, int, int, int]:
    t = Selftest(kernel="6.12")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    return t, ioas, md.idev_id, t.hwpt_alloc(md.idev_id, ioas, NEST_PARENT)


def test_nested_alloc_checks_in_the_kernels_order() -> None:
    """``iommufd_hwpt_alloc`` / ``iommufd_hwpt_nested_alloc`` / ``mock_domain_alloc_user``:
    each negative case of the selftest, then two nested HWPTs with the default IOTLB."""
    t, ioas, dev, parent = _setup()
    not_parent = t.hwpt_alloc(dev, ioas)
    expect_errno(errno.ENOENT, t.hwpt_alloc, ioas, ioas)
    expect_errno(errno.EINVAL, t.hwpt_alloc, dev, dev)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, dev, ioas, NEST_PARENT | FAULT_ID_VALID)
    expect_errno(errno.EINVAL, _nested, t, dev, parent, data_type=u.IOMMU_HWPT_DATA_NONE)
    expect_errno(errno.EOPNOTSUPP, _nested, t, dev, parent,
                 data_type=IOMMU_HWPT_DATA_SELFTEST + 1)
    expect_errno(errno.EINVAL, _nested, t, dev, parent, data_len=3)
    expect_errno(errno.EINVAL, _nested, t, dev, parent, data_len=5)  # longer than the struct
    expect_errno(errno.EFAULT, t.hwpt_alloc, dev, parent, data_type=IOMMU_HWPT_DATA_SELFTEST,
                 data_len=4, data_uptr=0)
    expect_errno(errno.EOPNOTSUPP, _nested, t, dev, parent, NEST_PARENT)
    expect_errno(errno.EINVAL, _nested, t, dev, not_parent)
    first = t.ioas_alloc()  # the failed calls left no id behind
    t.destroy(first)
    nested = [_nested(t, dev, parent), _nested(t, dev, parent)]
    assert nested == [first, first + 1]
    for hwpt in nested:
        _check_iotlb(t, hwpt, (IOTLB_DEFAULT,) * 4)
    expect_errno(errno.EINVAL, t.test_cmd, OP_MD_CHECK_IOTLB, nested[0],
                 struct.pack("<II", IOTLB_ID_MAX + 1, IOTLB_DEFAULT))
    expect_errno(errno.ENOENT, t.test_cmd, OP_MD_CHECK_IOTLB, parent,
                 struct.pack("<II", 0, IOTLB_DEFAULT))
    expect_errno(errno.EINVAL, _nested, t, dev, nested[0])  # not on a nested HWPT
    expect_errno(errno.EBUSY, t.destroy, parent)
    t.destroy(nested[0])
    expect_errno(errno.EBUSY, t.destroy, parent)
    t.destroy(nested[1])
    t.destroy(parent)
    t.destroy(not_parent)
    t.close()


def test_invalidate_as_the_selftest_does() -> None:
    """``iommufd_hwpt_invalidate`` and ``mock_domain_cache_invalidate_user``: ENOENT for
    a paging HWPT, the type and size checks, a stop at the first bad entry with the
    count of the ones done, then single, double and FLAG_ALL invalidations."""
    t, _, dev, parent = _setup()
    nested = [_nested(t, dev, parent), _nested(t, dev, parent)]
    n0 = nested[0]
    assert _invalidate(t, parent, [(0, 0)]) == (errno.ENOENT, 0)
    assert _invalidate(t, n0, []) == (0, 0)
    assert _invalidate(t, n0, [], data_type=INV_SELFTEST_INVALID) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0, 0)], data_type=INV_SELFTEST_INVALID) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0, 0)], entry_len=9) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0, 0)], entry_len=1) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0xFFFFFFFF, 0)]) == (errno.EOPNOTSUPP, 0)
    assert _invalidate(t, n0, [(0, 0)], null=True) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0, 0)], entry_len=0) == (errno.EINVAL, 0)
    assert _invalidate(t, n0, [(0, IOTLB_ID_MAX + 1)]) == (errno.EINVAL, 0)
    _check_iotlb(t, n0, (IOTLB_DEFAULT,) * 4)
    assert _invalidate(t, n0, [(0, 0), (0xFFFFFFFF, 1)]) == (errno.EOPNOTSUPP, 1)
    _check_iotlb(t, n0, (0, IOTLB_DEFAULT, IOTLB_DEFAULT, IOTLB_DEFAULT))
    assert _invalidate(t, n0, [(0, 0), (0, IOTLB_ID_MAX + 1)]) == (errno.EINVAL, 1)
    assert _invalidate(t, n0, [(0, 1)]) == (0, 1)
    _check_iotlb(t, n0, (0, 0, IOTLB_DEFAULT, IOTLB_DEFAULT))
    assert _invalidate(t, n0, [(0, 2), (0, 3)]) == (0, 2)
    _check_iotlb(t, n0, (0, 0, 0, 0))
    _check_iotlb(t, nested[1], (IOTLB_DEFAULT,) * 4)
    # the id is checked before FLAG_ALL, though FLAG_ALL then ignores it
    assert _invalidate(t, nested[1], [(INV_FLAG_ALL, IOTLB_ID_MAX + 1)]) == (errno.EINVAL, 0)
    assert _invalidate(t, nested[1], [(INV_FLAG_ALL, 2)]) == (0, 1)
    _check_iotlb(t, nested[1], (0, 0, 0, 0))
    t.close()


def test_close_releases_nested_before_their_parent() -> None:
    """The context's release destroys a nested HWPT before the parent it holds, and
    nothing is left."""
    t, _, dev, parent = _setup()
    _nested(t, dev, parent)
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    t.close()
    assert not ctx.objects and not ctx.warnings


def test_7_0_nested_hwpts_through_domain_alloc_nested() -> None:
    """Linux 7.0 makes a nested HWPT on a nest-parent HWPT through the mock's
    ``domain_alloc_nested``: the core's checks as in 6.12 (flags beyond FAULT_ID_VALID
    and PASID: EOPNOTSUPP; not a nest parent: EINVAL), then the mock's (another data
    type: EOPNOTSUPP; a bad length: EINVAL), and the IOTLB set to the user's value;
    IOMMU_HWPT_ALLOC_PASID, which 6.12 refuses, is taken."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    dev = md.idev_id
    parent = t.hwpt_alloc(dev, ioas, NEST_PARENT)
    not_parent = t.hwpt_alloc(dev, ioas)
    expect_errno(errno.EOPNOTSUPP, _nested, t, dev, parent, NEST_PARENT)
    expect_errno(errno.EINVAL, _nested, t, dev, not_parent)
    expect_errno(errno.EOPNOTSUPP, _nested, t, dev, parent,
                 data_type=IOMMU_HWPT_DATA_SELFTEST + 1)
    expect_errno(errno.EINVAL, _nested, t, dev, parent, data_len=3)
    nested = _nested(t, dev, parent)
    pasid = _nested(t, dev, parent, u.IOMMU_HWPT_ALLOC_PASID)
    _check_iotlb(t, nested, (IOTLB_DEFAULT,) * 4)
    assert _invalidate(t, nested, [(INV_FLAG_ALL, 0)]) == (0, 1)
    _check_iotlb(t, nested, (0, 0, 0, 0))
    expect_errno(errno.EBUSY, t.destroy, parent)
    t.destroy(pasid)
    t.destroy(nested)
    t.destroy(parent)
    t6 = Selftest(kernel="6.12")
    ioas6 = t6.ioas_alloc()
    md6 = t6.mock_domain(ioas6)
    parent6 = t6.hwpt_alloc(md6.idev_id, ioas6, NEST_PARENT)
    expect_errno(errno.EOPNOTSUPP, _nested, t6, md6.idev_id, parent6,
                 u.IOMMU_HWPT_ALLOC_PASID)
    t.close()
    t6.close()


def test_nested_alloc_and_invalidate_under_fail_nth() -> None:
    """Fail the nested HWPT_ALLOC at its 1st, 2nd, ... fail point until it succeeds:
    each failure leaves no object, no reserved id and the parent's users as before
    (``iommufd_hwpt_nested_alloc``'s abort path). Then the same for an invalidation,
    whose only fail point is the lookup (ENOENT, ``entry_num`` 0, IOTLB untouched)."""
    t, _, dev, parent = _setup()
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    fail = t.m.mem.fail_nth
    page = t.p.mmap(PAGE_SIZE, populate=True)
    t.p.write(page, DATA + struct.pack("<II", INV_FLAG_ALL, 0))
    before = (dict(ctx.objects), ctx.objects[parent].users)
    n = 0
    while True:
        n += 1
        fail.arm(n)
        try:
            nested = t.hwpt_alloc(dev, parent, data_type=IOMMU_HWPT_DATA_SELFTEST,
                                  data_len=4, data_uptr=page)
        except OSError:
            assert fail.fired is not None
            assert (dict(ctx.objects), ctx.objects[parent].users) == before, fail.fired
            assert not ctx._reserved
            continue
        finally:
            fail.disarm()
        break
    assert n > 2  # at least the object, its id and the nested domain's kzalloc
    assert ctx.objects[parent].users == before[1] + 1
    fail.arm(1)
    buf = bytearray(u.HWPT_INVALIDATE.pack(32, nested, page + 4, INV_SELFTEST, 8, 1, 0))
    expect_errno(errno.ENOENT, t.p.ioctl, t.fd, u.IOMMU_HWPT_INVALIDATE, buf)
    fail.disarm()
    assert u.HWPT_INVALIDATE.unpack(buf)[5] == 0
    _check_iotlb(t, nested, (IOTLB_DEFAULT,) * 4)
    t.close()
    assert not ctx.objects
