"""Linux 7.0's vIOMMU uAPI on the mock, as the selftest's ``iommufd_viommu`` fixture uses
it: IOMMU_VIOMMU_ALLOC of IOMMU_VIOMMU_TYPE_SELFTEST on a nest-parent HWPT,
IOMMU_VDEVICE_ALLOC, nested HWPTs on the vIOMMU, IOMMU_HWPT_INVALIDATE of the vIOMMU
(``mock_viommu_cache_invalidate``, checked with DEV_CHECK_CACHE), IOMMU_VEVENTQ_ALLOC
and its fd fed by TRIGGER_VEVENT. The same calls on 6.12 are ENOTTY (EOPNOTSUPP for the
test ops). docs/design/nesting.md ("7.0 vIOMMU facts") has the kernel's rules."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.iommufd import uapi as u

from ..helpers import expect_errno
from .selftest_lib import IOMMU_HWPT_DATA_SELFTEST, PAGE_SIZE, Selftest
from .viommu_lib import (
    DEV_CACHE_DEFAULT,
    OP_TRIGGER_VEVENT,
    VEVENTQ_TYPE_SELFTEST,
    VIOMMU_INV_SELFTEST,
    VIOMMU_INV_SELFTEST_INVALID,
    check_cache,
    invalidate,
    read_vevents,
    vdevice_alloc,
    veventq_alloc,
    viommu_alloc,
    viommu_inv,
)

NEST_PARENT = u.IOMMU_HWPT_ALLOC_NEST_PARENT
IOTLB_DEFAULT = 0xBADBEEF
DATA = struct.pack("<I", IOTLB_DEFAULT)  # struct iommu_hwpt_selftest
FLAG_ALL = 1


def _fixture(kernel: str = "7.0") -> tuple[Selftest, int, int, int, int]:
    """The ``iommufd_viommu`` fixture: an IOAS, a mock device on it (stdev, idev) and a
    nest-parent HWPT; (t, ioas, stdev, idev, parent)."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    parent = t.hwpt_alloc(md.idev_id, ioas, NEST_PARENT)
    return t, ioas, md.stdev_id, md.idev_id, parent


def _ctx(t: Selftest) -> object:
    return t.p.files[t.fd].ctx  # type: ignore[attr-defined]


def test_6_12_has_no_viommu_commands() -> None:
    """6.12's ioctl table lacks the three commands (ENOTTY, before the size is read);
    its selftest lacks DEV_CHECK_CACHE and TRIGGER_VEVENT (EOPNOTSUPP)."""
    t, _, _, dev, parent = _fixture("6.12")
    expect_errno(errno.ENOTTY, viommu_alloc, t, dev, parent)
    expect_errno(errno.ENOTTY, vdevice_alloc, t, 1, dev, 0)
    expect_errno(errno.ENOTTY, veventq_alloc, t, 1)
    expect_errno(errno.ENOTTY, t.ioctl, u.IOMMU_VIOMMU_ALLOC, b"\0" * 4)  # size unread
    expect_errno(errno.EOPNOTSUPP, t.test_cmd, 16, dev, struct.pack("<II", 0, 0))
    expect_errno(errno.EOPNOTSUPP, t.test_cmd, OP_TRIGGER_VEVENT, 0, struct.pack("<I", dev))
    t.close()


def test_viommu_alloc_checks_in_the_kernels_order() -> None:
    """``iommufd_viommu_alloc_ioctl``: flags, then the DEFAULT type (EOPNOTSUPP; the
    ``__reserved`` word is not checked); the device (ENOENT); a type the driver has no
    vIOMMU of (EOPNOTSUPP); the HWPT (ENOENT for an IOAS: not a paging HWPT); a HWPT
    that is no nest parent (EINVAL). Failures leave no object; the vIOMMU holds its
    parent (EBUSY) until destroyed. Sizes: below ``out_viommu_id`` EINVAL."""
    t, ioas, _, dev, parent = _fixture()
    plain = t.hwpt_alloc(dev, ioas)
    expect_errno(errno.EOPNOTSUPP, viommu_alloc, t, dev, parent, flags=1)
    expect_errno(errno.EOPNOTSUPP, viommu_alloc, t, dev, parent, 0)
    expect_errno(errno.EOPNOTSUPP, viommu_alloc, t, 0, parent, 0)  # type before device
    expect_errno(errno.ENOENT, viommu_alloc, t, 999, parent)
    expect_errno(errno.EOPNOTSUPP, viommu_alloc, t, dev, parent, 1)  # ARM_SMMUV3
    expect_errno(errno.ENOENT, viommu_alloc, t, dev, ioas)
    expect_errno(errno.ENOENT, viommu_alloc, t, dev, 999)
    expect_errno(errno.EINVAL, viommu_alloc, t, dev, plain)
    expect_errno(errno.EINVAL, t.ioctl, u.IOMMU_VIOMMU_ALLOC,
                 u.VIOMMU_ALLOC.pack(20, 0, 0xDEADBEEF, dev, parent, 0, 0, 0, 0))
    before = set(_ctx(t).objects)  # type: ignore[attr-defined]
    viommu = viommu_alloc(t, dev, parent, rsvd=0xFFFF)
    assert set(_ctx(t).objects) - before == {viommu}  # type: ignore[attr-defined]
    expect_errno(errno.EBUSY, t.destroy, parent)
    _ctx(t)._check()  # type: ignore[attr-defined]
    t.destroy(viommu)
    t.destroy(parent)
    t.destroy(plain)
    t.close()


def test_vdevice_alloc_one_per_device_and_per_virtual_id() -> None:
    """``iommufd_vdevice_alloc_ioctl``: the vIOMMU, then the device (ENOENT each); a
    device with a vDEVICE already EEXIST; a virtual id taken EEXIST; the vDEVICE holds
    the vIOMMU (EBUSY); destroyed, the id and the device are free again."""
    t, ioas, _, dev, parent = _fixture()
    md2 = t.mock_domain(ioas)
    viommu = viommu_alloc(t, dev, parent)
    expect_errno(errno.ENOENT, vdevice_alloc, t, 999, dev, 0x99)
    expect_errno(errno.ENOENT, vdevice_alloc, t, parent, dev, 0x99)  # not a vIOMMU
    expect_errno(errno.ENOENT, vdevice_alloc, t, viommu, 999, 0x99)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)
    expect_errno(errno.EEXIST, vdevice_alloc, t, viommu, dev, 0x88)
    expect_errno(errno.EEXIST, vdevice_alloc, t, viommu, md2.idev_id, 0x99)
    assert vdev not in (vdevice_alloc(t, viommu, md2.idev_id, 0x88),)
    expect_errno(errno.EBUSY, t.destroy, viommu)
    _ctx(t)._check()  # type: ignore[attr-defined]
    t.destroy(vdev)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)  # reusable once gone
    t.destroy(vdev)
    ctx = _ctx(t)
    t.close()  # the other vDEVICE, vIOMMU and HWPT go with the context
    assert not ctx.objects  # type: ignore[attr-defined]


def test_nested_hwpt_on_a_viommu() -> None:
    """HWPT_ALLOC with a vIOMMU as ``pt_id`` (``iommufd_viommu_alloc_hwpt_nested``):
    EOPNOTSUPP for a flag beyond FAULT_ID_VALID and PASID or no data; the mock's EOPNOTSUPP for
    another data type and EINVAL for a bad length; the nested HWPT holds the vIOMMU
    (EBUSY), not its parent a second time; a device can be replaced onto it once it has
    a vDEVICE there (``mock_domain_nop_attach``: ENOENT without)."""
    t, ioas, stdev, dev, parent = _fixture()
    viommu = viommu_alloc(t, dev, parent)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc_data, dev, viommu, NEST_PARENT,
                 IOMMU_HWPT_DATA_SELFTEST, DATA)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, dev, viommu)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc_data, dev, viommu, 0,
                 IOMMU_HWPT_DATA_SELFTEST + 1, DATA)
    expect_errno(errno.EINVAL, t.hwpt_alloc_data, dev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST,
                 DATA, 3)
    nested = t.hwpt_alloc_data(dev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST, DATA)
    t.destroy(t.hwpt_alloc_data(dev, viommu, u.IOMMU_HWPT_ALLOC_PASID,
                                IOMMU_HWPT_DATA_SELFTEST, DATA))  # PASID is taken
    ctx = _ctx(t)
    assert ctx.objects[parent].users == 1  # type: ignore[attr-defined]  # the vIOMMU only
    expect_errno(errno.EBUSY, t.destroy, viommu)
    t.test_cmd(14, nested, struct.pack("<II", 0, IOTLB_DEFAULT))  # MD_CHECK_IOTLB
    expect_errno(errno.ENOENT, t.mock_domain_replace, stdev, nested)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)
    assert t.mock_domain_replace(stdev, nested) == nested
    expect_errno(errno.EBUSY, t.destroy, nested)
    ctx._check()  # type: ignore[attr-defined]
    t.mock_domain_replace(stdev, ioas)
    t.destroy(nested)
    t.destroy(vdev)
    t.destroy(viommu)
    t.close()


def test_viommu_invalidation_as_the_selftest_does() -> None:
    """HWPT_INVALIDATE of a vIOMMU (``mock_viommu_cache_invalidate``): an empty array of
    the selftest type is a probe; another type EINVAL; a flag EOPNOTSUPP; a cache id
    past 3 EINVAL; a virtual id without a vDEVICE EINVAL; ``entry_num`` out is what was
    done before the error. The whole array is copied first (a short entry is
    zero-filled, a longer one with a non-zero tail E2BIG). 7.0's lookup: no object
    ENOENT, an object of another kind (the IOAS) EINVAL."""
    t, ioas, _, dev, parent = _fixture()
    viommu = viommu_alloc(t, dev, parent)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)
    inv = VIOMMU_INV_SELFTEST
    check_cache(t, dev, (DEV_CACHE_DEFAULT,) * 4)
    assert invalidate(t, viommu, b"", data_type=inv, entry_len=12, num=0) == (0, 0)
    assert invalidate(t, viommu, viommu_inv((0, 0x99, 0)), data_type=VIOMMU_INV_SELFTEST_INVALID,
                      entry_len=12) == (errno.EINVAL, 0)
    assert invalidate(t, viommu, viommu_inv((0, 0x99, 0), (2, 0x99, 0)), data_type=inv,
                      entry_len=12) == (errno.EOPNOTSUPP, 1)
    check_cache(t, dev, (0,) + (DEV_CACHE_DEFAULT,) * 3)
    assert invalidate(t, viommu, viommu_inv((0, 0x99, 4)), data_type=inv,
                      entry_len=12) == (errno.EINVAL, 0)
    assert invalidate(t, viommu, viommu_inv((0, 0x98, 1)), data_type=inv,
                      entry_len=12) == (errno.EINVAL, 0)
    # a 16-byte entry with a non-zero tail: E2BIG; an 8-byte one reads cache_id 0
    assert invalidate(t, viommu, viommu_inv((0, 0x99, 1)) + b"\1\0\0\0", data_type=inv,
                      entry_len=16) == (errno.E2BIG, 0)
    assert invalidate(t, viommu, struct.pack("<II", 0, 0x99), data_type=inv,
                      entry_len=8) == (0, 1)
    assert invalidate(t, viommu, viommu_inv((0, 0x99, 1), (0, 0x99, 2)), data_type=inv,
                      entry_len=12) == (0, 2)
    check_cache(t, dev, (0, 0, 0, DEV_CACHE_DEFAULT))
    assert invalidate(t, viommu, viommu_inv((FLAG_ALL, 0x99, 0)), data_type=inv,
                      entry_len=12) == (0, 1)
    check_cache(t, dev, (0, 0, 0, 0))
    assert invalidate(t, 999, b"", data_type=inv, entry_len=12, num=0) == (errno.ENOENT, 0)
    assert invalidate(t, ioas, b"", data_type=inv, entry_len=12, num=0) == (errno.EINVAL, 0)
    t.destroy(vdev)
    t.close()


def test_veventq_alloc_and_its_fd() -> None:
    """IOMMU_VEVENTQ_ALLOC (``iommufd_veventq_alloc``): EOPNOTSUPP for flags,
    ``__reserved`` or the DEFAULT type; EINVAL for depth 0; ENOENT for no vIOMMU;
    EEXIST for a second one of a type (any other type is taken). The fd holds the
    vEVENTQ (DESTROY EBUSY until it is closed); the vEVENTQ holds the vIOMMU."""
    t, _, _, dev, parent = _fixture()
    viommu = viommu_alloc(t, dev, parent)
    expect_errno(errno.EOPNOTSUPP, veventq_alloc, t, viommu, flags=1)
    expect_errno(errno.EOPNOTSUPP, veventq_alloc, t, viommu, rsvd=1)
    expect_errno(errno.EOPNOTSUPP, veventq_alloc, t, viommu, 0)
    expect_errno(errno.EINVAL, veventq_alloc, t, viommu, depth=0)
    expect_errno(errno.ENOENT, veventq_alloc, t, 999)
    q, fd = veventq_alloc(t, viommu)
    assert fd > t.fd
    expect_errno(errno.EEXIST, veventq_alloc, t, viommu)
    q2, fd2 = veventq_alloc(t, viommu, 0x1234)
    expect_errno(errno.EBUSY, t.destroy, viommu)
    expect_errno(errno.EBUSY, t.destroy, q)
    _ctx(t)._check()  # type: ignore[attr-defined]
    assert t.p.read_fd(fd, 64) == b""  # nothing queued: the read does not block
    expect_errno(errno.EINVAL, t.p.write_fd, fd, b"\0" * 8)  # no write op
    t.p.close(fd)
    t.destroy(q)
    t.p.close(fd2)
    t.destroy(q2)
    t.destroy(viommu)
    t.close()


def test_vevents_sequence_and_lost_events() -> None:
    """TRIGGER_VEVENT with the device on a nested HWPT of the vIOMMU and a vDEVICE: each
    event is a header (flags 0, sequence) and the virtual id. Past ``veventq_depth``
    events are lost: a LOST_EVENTS header takes the next sequence number (moved on by
    each further loss) and is the last record; reading frees room. A read too short
    for the next whole record leaves it queued. Without a vDEVICE attach ENOENTs
    nothing: the trigger is ENOENT; without a vEVENTQ of the type EOPNOTSUPP."""
    t, ioas, stdev, dev, parent = _fixture()
    viommu = viommu_alloc(t, dev, parent)
    nested = t.hwpt_alloc_data(dev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST, DATA)
    trig = struct.pack("<I", dev)
    expect_errno(errno.ENOENT, t.mock_domain_replace, stdev, nested)  # no vSID yet
    expect_errno(errno.ENOENT, t.test_cmd, OP_TRIGGER_VEVENT, 0, trig)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)
    t.mock_domain_replace(stdev, nested)
    expect_errno(errno.EOPNOTSUPP, t.test_cmd, OP_TRIGGER_VEVENT, 0, trig)
    q, fd = veventq_alloc(t, viommu, VEVENTQ_TYPE_SELFTEST, depth=2)
    for _ in range(4):
        t.test_cmd(OP_TRIGGER_VEVENT, 0, trig)
    vid = struct.pack("<I", 0x99)
    assert t.p.poll(fd) == 0x41  # EPOLLIN | EPOLLRDNORM, never EPOLLOUT
    expect_errno(errno.ESPIPE, t.p.pread, fd, 12, 0)
    assert t.p.read_fd(fd, 11) == b""  # the first record needs 12 bytes
    assert read_vevents(t, fd, 12) == [(0, 0, vid)]
    assert read_vevents(t, fd) == [(0, 1, vid), (1, 3, b"")]
    t.test_cmd(OP_TRIGGER_VEVENT, 0, trig)
    assert read_vevents(t, fd) == [(0, 4, vid)]
    assert t.p.poll(fd) == 0
    t.mock_domain_replace(stdev, ioas)
    expect_errno(errno.ENOENT, t.test_cmd, OP_TRIGGER_VEVENT, 0, trig)
    t.p.close(fd)
    for id in (q, nested, vdev, viommu):
        t.destroy(id)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_replace_onto_a_nested_hwpt(kernel: str) -> None:
    """A mock device replaced onto a nested HWPT (on a paging parent) and back: the
    nested HWPT is held while attached (EBUSY), the device's reserved regions stay in
    the parent's IOAS."""
    t, _, stdev, dev, parent = _fixture(kernel)
    nested = t.hwpt_alloc_data(dev, parent, 0, IOMMU_HWPT_DATA_SELFTEST, DATA)
    assert t.mock_domain_replace(stdev, nested) == nested
    expect_errno(errno.EBUSY, t.destroy, nested)
    _ctx(t)._check()  # type: ignore[attr-defined]
    t.mock_domain_replace(stdev, parent)
    t.destroy(nested)
    t.p.munmap(t.p.mmap(PAGE_SIZE), PAGE_SIZE)
    t.close()


def test_a_faulting_read_leaves_the_record_queued() -> None:
    """``iommufd_veventq_fops_read`` whose ``copy_to_user`` faults: EFAULT when nothing
    was given, and the record stays first (``iommufd_veventq_deliver_restore``); after
    a record was given, the read returns its length instead."""
    from iommulab.errors import BadAddress
    t, ioas, stdev, dev, parent = _fixture()
    viommu = viommu_alloc(t, dev, parent)
    nested = t.hwpt_alloc_data(dev, viommu, 0, IOMMU_HWPT_DATA_SELFTEST, DATA)
    vdev = vdevice_alloc(t, viommu, dev, 0x99)
    t.mock_domain_replace(stdev, nested)
    q, fd = veventq_alloc(t, viommu, VEVENTQ_TYPE_SELFTEST, depth=4)
    trig = struct.pack("<I", dev)
    t.test_cmd(OP_TRIGGER_VEVENT, 0, trig)
    t.test_cmd(OP_TRIGGER_VEVENT, 0, trig)
    f = t.p.files[fd]

    def faulting(offset: int, data: bytes) -> None:
        raise BadAddress("copy_to_user")

    expect_errno(errno.EFAULT, f.read_user, 64, faulting)  # type: ignore[attr-defined]
    got: list[int] = []

    def second_faults(offset: int, data: bytes) -> None:
        if offset:
            raise BadAddress("copy_to_user")
        got.append(len(data))

    assert f.read_user(64, second_faults) == 12  # type: ignore[attr-defined]
    assert [seq for _, seq, _ in read_vevents(t, fd)] == [1]
    t.p.close(fd)
    t.mock_domain_replace(stdev, ioas)
    for id in (q, nested, vdev, viommu):
        t.destroy(id)
    t.close()
