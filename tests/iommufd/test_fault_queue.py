"""Fault queues on the mock (Linux 6.12 drivers/iommu/iommufd/fault.c, device.c,
io-pgfault.c): IOMMU_FAULT_QUEUE_ALLOC, the fault fd's read/write/poll, FAULT_ID_VALID on
nested HWPTs, replace onto nested HWPTs and IOPF on attach, TRIGGER_IOPF, and the
lifetimes of the object and its file, through ``Process.ioctl``/``read_fd``/``write_fd``
as the selftest's ``alloc_hwpt_nested`` drives them."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.errors import BadAddress
from iommulab.iommufd import uapi as u
from iommulab.iommufd.eventq import EPOLLIN, EPOLLOUT, EPOLLRDNORM, HWPT_PGFAULT, EventqFile
from iommulab.iommufd.selftest import OP_TRIGGER_IOPF
from iommulab.kernel import LINUX_6_12, LINUX_7_0
from iommulab.uapi import iommufd as h

from ..helpers import expect_errno
from .selftest_lib import IOMMU_HWPT_DATA_SELFTEST, PAGE_SIZE, Selftest

NEST_PARENT, FAULT_ID_VALID = u.IOMMU_HWPT_ALLOC_NEST_PARENT, u.IOMMU_HWPT_FAULT_ID_VALID
DATA = struct.pack("<I", 0xBADBEEF)
REC = HWPT_PGFAULT.size  # 48
PASID_VALID, LAST_PAGE = h.IOMMU_PGFAULT_FLAGS_PASID_VALID, h.IOMMU_PGFAULT_FLAGS_LAST_PAGE
PERM_RW = h.IOMMU_PGFAULT_PERM_READ | h.IOMMU_PGFAULT_PERM_WRITE
SUCCESS, INVALID = h.IOMMUFD_PAGE_RESP_SUCCESS, h.IOMMUFD_PAGE_RESP_INVALID


def fault_alloc(t: Selftest, flags: int = 0, size: int = 16) -> tuple[int, int]:
    out = t.ioctl(u.IOMMU_FAULT_QUEUE_ALLOC, struct.pack("<IIII", size, flags, 0, 0))
    _, _, fault_id, fault_fd = struct.unpack("<IIII", out[:16])
    return fault_id, fault_fd


def nested(t: Selftest, dev: int, parent: int, fault_id: int = 0) -> int:
    return t.hwpt_alloc_data(dev, parent, FAULT_ID_VALID if fault_id else 0,
                             IOMMU_HWPT_DATA_SELFTEST, DATA, None, fault_id=fault_id)


def trigger(t: Selftest, dev: int, pasid: int = 1, grpid: int = 2,
            addr: int = 0xDEADBEAF) -> None:
    t.test_cmd(OP_TRIGGER_IOPF, 0, struct.pack("<IIIIQ", dev, pasid, grpid, PERM_RW, addr))


def response(cookie: int, code: int = SUCCESS) -> bytes:
    return struct.pack("<II", cookie, code)


class Setup:
    """The selftest's fixture and step 2: an IOAS with a mock device, a NEST_PARENT HWPT,
    a fault queue and a nested HWPT delivering to it."""

    def __init__(self) -> None:
        self.t = t = Selftest(kernel="6.12")
        self.ioas = t.ioas_alloc()
        md = t.mock_domain(self.ioas)
        self.stdev, self.hwpt, self.dev = md.stdev_id, md.hwpt_id, md.idev_id
        self.parent = t.hwpt_alloc(self.dev, self.ioas, NEST_PARENT)
        self.fault_id, self.fault_fd = fault_alloc(t)
        self.iopf = nested(t, self.dev, self.parent, self.fault_id)
        self.ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
        self.driver = t.m.core.driver

    def check(self) -> None:
        self.ctx._check()


def test_fault_alloc_answers_and_checks() -> None:
    """``iommufd_fault_alloc``: EOPNOTSUPP for any flag (nothing made), the ucmd size
    rules, then an id and an fd (non-zero, as the selftest asserts); the fd is the
    lowest free one, and DESTROY of the object is EBUSY while it is open."""
    t = Selftest(kernel="6.12")
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    expect_errno(errno.EOPNOTSUPP, fault_alloc, t, flags=1)
    expect_errno(errno.EINVAL, fault_alloc, t, size=15)
    buf = bytearray(struct.pack("<IIIII", 20, 0, 0, 0, 1))
    expect_errno(errno.E2BIG, t.p.ioctl, t.fd, u.IOMMU_FAULT_QUEUE_ALLOC, buf)
    assert not ctx.objects and not ctx._reserved and set(t.p.files) == {t.fd}
    fault_id, fault_fd = fault_alloc(t)
    assert fault_id == 1 and fault_fd == t.fd + 1
    assert isinstance(t.p.files[fault_fd], EventqFile)
    expect_errno(errno.EBUSY, t.destroy, fault_id)
    assert t.p.poll(fault_fd) == EPOLLOUT
    assert t.p.read_fd(fault_fd, REC) == b""  # nothing waits: 0 bytes, no error
    ctx._check()
    t.p.close(fault_fd)
    t.destroy(fault_id)
    assert not ctx.objects
    t.close()


def test_fault_alloc_is_enotty_nowhere_and_7_0_has_it() -> None:
    """The command is in 6.12's table and 7.0's (since 6.11)."""
    for kernel, version in (("6.12", LINUX_6_12), ("7.0", LINUX_7_0)):
        assert u.command(u.IOMMU_FAULT_QUEUE_ALLOC, version) is not None
        t = Selftest(kernel=kernel)
        fault_alloc(t)
        t.close()


def test_fault_id_valid_on_a_nested_hwpt() -> None:
    """``iommufd_hwpt_alloc`` with FAULT_ID_VALID: ENOENT (the nested HWPT destroyed
    again, its id free) for an id that is no fault object, or is one of another kind;
    with the fault object, the HWPT holds it (DESTROY of the fault EBUSY even once its
    fd is closed, until the HWPT goes)."""
    s = Setup()
    t = s.t
    expect_errno(errno.ENOENT, nested, t, s.dev, s.parent, 0xFFFFFFFF)
    expect_errno(errno.ENOENT, nested, t, s.dev, s.parent, s.ioas)
    free = t.ioas_alloc()
    assert free == s.iopf + 1  # the failed allocations gave their ids back
    t.destroy(free)
    assert s.ctx.objects[s.fault_id].users == 2  # its fd and the HWPT
    t.p.close(s.fault_fd)
    expect_errno(errno.EBUSY, t.destroy, s.fault_id)
    s.check()
    t.destroy(s.iopf)
    t.destroy(s.fault_id)
    s.check()
    t.close()


def test_replace_onto_nested_hwpts_as_the_selftest_does() -> None:
    """``iommufd_device_change_pt`` takes a nested HWPT: the attached one gains a user
    (DESTROY EBUSY), the other can go, and the device's DMA goes through the parent's
    IOAS (the mock has no stage 1)."""
    s = Setup()
    t = s.t
    n0, n1 = nested(t, s.dev, s.parent), nested(t, s.dev, s.parent)
    assert t.mock_domain_replace(s.stdev, n0) == n0
    expect_errno(errno.EBUSY, t.destroy, n0)
    assert t.mock_domain_replace(s.stdev, n1) == n1
    expect_errno(errno.EBUSY, t.destroy, n1)
    t.destroy(n0)
    s.check()
    iova = t.map(s.ioas, t.buffer, PAGE_SIZE)
    t.check_map(s.parent, iova, t.buffer, PAGE_SIZE)
    idev = s.ctx.objects[s.dev]
    sid = idev.dev.dev_iommu.priv.sid
    assert t.m.core.driver.hw.domains[sid] is s.ctx.objects[s.parent].domain
    assert t.mock_domain_replace(s.stdev, s.parent) == s.parent
    t.destroy(n1)
    t.unmap(s.ioas, iova, PAGE_SIZE)
    s.check()
    t.close()


def test_replace_onto_a_nested_hwpt_of_another_ioas() -> None:
    """A replace onto a nested HWPT whose parent is in another IOAS moves the device to
    that IOAS (``find_hwpt_paging``): its DMA goes through the parent's mappings, the
    automatic HWPT it left goes, and a replace back to the first IOAS makes a new one."""
    t = Selftest(kernel="6.12")
    ioas_a, ioas_b = t.ioas_alloc(), t.ioas_alloc()
    md = t.mock_domain(ioas_a)
    parent_b = t.hwpt_alloc(md.idev_id, ioas_b, NEST_PARENT)
    n = nested(t, md.idev_id, parent_b)
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    idev = ctx.objects[md.idev_id]
    assert t.mock_domain_replace(md.stdev_id, n) == n
    assert md.hwpt_id not in ctx.objects
    iova = t.map(ioas_b, t.buffer, PAGE_SIZE)
    sid = idev.dev.dev_iommu.priv.sid
    assert t.m.core.driver.hw.domains[sid] is ctx.objects[parent_b].domain
    t.check_map(parent_b, iova, t.buffer, PAGE_SIZE)
    auto = t.mock_domain_replace(md.stdev_id, ioas_a)
    assert ctx.objects[auto].ioas is ctx.objects[ioas_a]
    ctx._check()
    t.close()


def test_trigger_read_respond_as_the_selftest_does() -> None:
    """``_test_cmd_trigger_iopf`` on the IOPF HWPT: one ``struct iommu_hwpt_pgfault``
    with the device's id, PASID_VALID | LAST_PAGE, the command's fields and cookie 1;
    poll shows it until it is read; the response with its cookie is accepted once and
    carried to the driver."""
    s = Setup()
    t = s.t
    assert t.mock_domain_replace(s.stdev, s.iopf) == s.iopf
    assert s.ctx.objects[s.dev].iopf_enabled == 1
    trigger(t, s.dev)
    assert t.p.poll(s.fault_fd) == EPOLLOUT | EPOLLIN | EPOLLRDNORM
    raw = t.p.read_fd(s.fault_fd, REC)
    rec = HWPT_PGFAULT.unpack(raw)
    assert rec == (PASID_VALID | LAST_PAGE, s.dev, 1, 2, PERM_RW, 0, 0xDEADBEAF, 0, 1)
    assert t.p.poll(s.fault_fd) == EPOLLOUT
    assert t.p.write_fd(s.fault_fd, response(1)) == 8
    assert s.driver.page_responses[-1][1].code == SUCCESS
    expect_errno(errno.EINVAL, t.p.write_fd, s.fault_fd, response(1))  # answered already
    s.check()
    t.mock_domain_replace(s.stdev, s.parent)
    assert s.ctx.objects[s.dev].iopf_enabled == 0
    t.destroy(s.iopf)
    t.p.close(s.fault_fd)
    t.destroy(s.fault_id)
    t.close()


def test_read_rules() -> None:
    """``iommufd_fault_fops_read``: ESPIPE for a count that is not whole records (before
    anything), EINVAL when the first group does not fit, whole groups as many as fit,
    cookies the lowest free from 1; pread is ESPIPE (``nonseekable_open``)."""
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    for grpid in (10, 11, 12):
        trigger(t, s.dev, pasid=1, grpid=grpid)
    expect_errno(errno.ESPIPE, t.p.read_fd, s.fault_fd, REC + 1)
    expect_errno(errno.EINVAL, t.p.read_fd, s.fault_fd, 0)
    expect_errno(errno.ESPIPE, t.p.pread, s.fault_fd, REC, 0)
    two = t.p.read_fd(s.fault_fd, 2 * REC)
    assert [HWPT_PGFAULT.unpack_from(two, i * REC)[3] for i in range(2)] == [10, 11]
    assert [HWPT_PGFAULT.unpack_from(two, i * REC)[8] for i in range(2)] == [1, 2]
    assert t.p.write_fd(s.fault_fd, response(1, INVALID)) == 8
    rest = t.p.read_fd(s.fault_fd, 4 * REC)
    assert len(rest) == REC and HWPT_PGFAULT.unpack(rest)[3:9:5] == (12, 1)  # cookie 1 again
    s.check()
    t.close()


def test_write_rules() -> None:
    """``iommufd_fault_fops_write``: ESPIPE for a count that is not whole responses;
    then each response in turn, stopping at a bad code or an unknown cookie (EINVAL
    when it is the first, else the bytes of those done)."""
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    trigger(t, s.dev, grpid=1)
    trigger(t, s.dev, grpid=2)
    t.p.read_fd(s.fault_fd, 2 * REC)
    expect_errno(errno.ESPIPE, t.p.write_fd, s.fault_fd, response(1)[:7])
    assert t.p.write_fd(s.fault_fd, b"") == 0
    expect_errno(errno.EINVAL, t.p.write_fd, s.fault_fd, response(1, 2))  # FAILURE: not ours
    expect_errno(errno.EINVAL, t.p.write_fd, s.fault_fd, response(3))
    n = len(s.driver.page_responses)
    assert t.p.write_fd(s.fault_fd, response(2) + response(7) + response(1)) == 8
    assert len(s.driver.page_responses) == n + 1
    assert t.p.write_fd(s.fault_fd, response(1)) == 8
    s.check()
    t.close()


def test_read_efault_puts_the_group_back() -> None:
    """A record the user's buffer refuses: EFAULT when it is the first group, and the
    group is still there (same cookie next time); after good groups, their bytes."""
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    trigger(t, s.dev, grpid=5)
    trigger(t, s.dev, grpid=6)
    f = t.p.files[s.fault_fd]
    assert isinstance(f, EventqFile)

    def refuse(offset: int, data: bytes) -> None:
        raise BadAddress("copy_to_user")

    with pytest.raises(BadAddress):
        f.read_user(REC, refuse)
    got: dict[int, bytes] = {}

    def second_refused(offset: int, data: bytes) -> None:
        if offset:
            raise BadAddress("copy_to_user")
        got[offset] = data

    assert f.read_user(2 * REC, second_refused) == REC
    assert HWPT_PGFAULT.unpack(got[0])[3] == 5 and HWPT_PGFAULT.unpack(got[0])[8] == 1
    again = HWPT_PGFAULT.unpack(t.p.read_fd(s.fault_fd, REC))
    assert again[3] == 6 and again[8] == 2
    s.check()
    t.close()


def test_detach_and_replace_answer_pending_faults_invalid() -> None:
    """``iommufd_auto_response_faults``: leaving the IOPF HWPT (replace, or the device's
    destruction) answers INVALID to its faults, read or not; the queue is empty and
    their cookies unknown."""
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    trigger(t, s.dev, grpid=1)
    trigger(t, s.dev, grpid=2)
    t.p.read_fd(s.fault_fd, REC)  # grpid 1 read (cookie 1), grpid 2 unread
    n = len(s.driver.page_responses)
    t.mock_domain_replace(s.stdev, s.parent)
    codes = sorted((r.grpid, r.code) for _, r in s.driver.page_responses[n:])
    assert codes == [(1, INVALID), (2, INVALID)]
    assert t.p.read_fd(s.fault_fd, REC) == b""
    expect_errno(errno.EINVAL, t.p.write_fd, s.fault_fd, response(1))
    # detach by destroying the device while a fault waits
    t.mock_domain_replace(s.stdev, s.iopf)
    trigger(t, s.dev, grpid=3)
    n = len(s.driver.page_responses)
    t.destroy(s.stdev)
    assert [(r.grpid, r.code) for _, r in s.driver.page_responses[n:]] == [(3, INVALID)]
    assert t.p.poll(s.fault_fd) == EPOLLOUT
    s.check()
    t.close()


def test_trigger_without_a_queue_is_answered_invalid() -> None:
    """A fault on a device whose HWPT has no fault object (or a PASID fault on a
    paging HWPT) reaches no queue: the driver answers it INVALID, and the command
    still succeeds. ENOENT for no such device."""
    s = Setup()
    t = s.t
    n = len(s.driver.page_responses)
    trigger(t, s.dev)
    trigger(t, s.dev, pasid=0)
    assert [r.code for _, r in s.driver.page_responses[n:]] == [INVALID, INVALID]
    expect_errno(errno.ENOENT, trigger, t, 0xFFFF)
    assert t.p.read_fd(s.fault_fd, REC) == b""
    t.close()


def test_destroy_order_and_closing_the_iommufd_first() -> None:
    """The fault fd holds the context: closing /dev/iommu first leaves it open, its
    faults readable; closing the fault fd then releases everything, the faults
    answered INVALID (``iommufd_fault_destroy``)."""
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    trigger(t, s.dev, grpid=9)
    t.p.close(t.fd)
    assert not s.ctx.releasing
    assert HWPT_PGFAULT.unpack(t.p.read_fd(s.fault_fd, REC))[3] == 9
    n = len(s.driver.page_responses)
    t.p.close(s.fault_fd)
    assert not s.ctx.objects and not s.ctx.warnings
    assert [(r.grpid, r.code) for _, r in s.driver.page_responses[n:]] == [(9, INVALID)]
    t.close()


def test_fault_alloc_under_fail_nth() -> None:
    """Fail IOMMU_FAULT_QUEUE_ALLOC at each of its points in turn until none fires: a
    failure is ENOMEM with no object, no reserved id, no fd and the context's file
    references as before (a point that is retried, an xarray node, fails nothing)."""
    t = Selftest(kernel="6.12")
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    fail = t.m.mem.fail_nth
    refs = t.p.files[t.fd].refs
    sites = []
    n = 0
    while True:
        n += 1
        fail.arm(n)
        try:
            fault_id, fault_fd = fault_alloc(t)
        except OSError as e:
            assert e.errno == errno.ENOMEM and fail.fired is not None
            sites.append(fail.fired)
            assert not ctx.objects and not ctx._reserved and set(t.p.files) == {t.fd}
            assert t.p.files[t.fd].refs == refs
            continue
        finally:
            fired = fail.fired
            fail.disarm()
        t.p.close(fault_fd)
        t.destroy(fault_id)
        if fired is None:
            break
    assert sites == ["kzalloc(iommufd_fault)", "d_alloc_pseudo(anon_inode_getfile)",
                     "alloc_empty_file(anon_inode_getfile)"]
    t.close()


def test_attach_straight_onto_a_nested_iopf_hwpt() -> None:
    """MOCK_DOMAIN with a nested HWPT as ``pt_id`` (``iommufd_device_attach`` through
    ``iommufd_hw_pagetable_attach``): the new device enables IOPF and its faults reach
    the queue with its own device id; its destruction answers them and disables IOPF
    (``iommufd_hwpt_detach_device``)."""
    s = Setup()
    t = s.t
    md = t.mock_domain(s.iopf)
    assert md.hwpt_id == s.iopf
    assert s.ctx.objects[md.idev_id].iopf_enabled == 1
    assert s.ctx.objects[s.iopf].users == 1
    trigger(t, md.idev_id, grpid=4)
    assert HWPT_PGFAULT.unpack(t.p.read_fd(s.fault_fd, REC))[1] == md.idev_id
    dev = s.ctx.objects[md.idev_id].dev
    assert dev.dev_iommu.fault_param is not None
    n = len(s.driver.page_responses)
    t.destroy(md.stdev_id)
    assert [(r.grpid, r.code) for _, r in s.driver.page_responses[n:]] == [(4, INVALID)]
    assert s.ctx.objects[s.iopf].users == 0
    s.check()
    t.close()


def test_trigger_refuses_before_anything_is_reported() -> None:
    """TRIGGER_IOPF's lookups: ENOENT for an id that is not a device (an IOAS), and no
    page response is sent."""
    s = Setup()
    t = s.t
    n = len(s.driver.page_responses)
    expect_errno(errno.ENOENT, trigger, t, s.ioas)
    assert len(s.driver.page_responses) == n
    t.close()


def test_a_group_of_several_requests_is_read_whole() -> None:
    """``iommu_report_device_fault``: requests that are not the last of their group wait
    (``report_partial_fault``) and the last one makes the group, in the order they came,
    other groups' requests left waiting. ``iommufd_fault_fops_read`` never splits it:
    EINVAL for a count one record short, then all its records with one cookie; one
    response answers the group (the driver is told once, for its last request)."""
    from iommulab.iommu.iopf import (
        IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
        IOMMU_NO_PASID,
        IommuPageResponse,
        IopfFault,
        report_device_fault,
    )
    s = Setup()
    t = s.t
    t.mock_domain_replace(s.stdev, s.iopf)
    dev = s.ctx.objects[s.dev].dev
    group = dev.group

    def handle_get(pasid: int, type: int) -> object:
        return s.ctx.attach_handles.get(group.id) if pasid == IOMMU_NO_PASID else None

    fail = t.m.mem.fail_nth
    for addr, grpid in ((0x1000, 7), (0x2000, 8), (0x3000, 7)):
        assert report_device_fault(dev, IopfFault(0, 0, grpid, 1, addr), handle_get, fail)
    assert t.p.poll(s.fault_fd) == EPOLLOUT  # nothing whole yet
    report_device_fault(dev, IopfFault(IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE, 0, 7, 1, 0x4000),
                        handle_get, fail)
    expect_errno(errno.EINVAL, t.p.read_fd, s.fault_fd, 2 * REC)
    raw = t.p.read_fd(s.fault_fd, 4 * REC)
    recs = [HWPT_PGFAULT.unpack_from(raw, i * REC) for i in range(len(raw) // REC)]
    assert [(r[6], r[3], r[8]) for r in recs] == [(0x1000, 7, 1), (0x3000, 7, 1),
                                                  (0x4000, 7, 1)]
    assert dev.dev_iommu.fault_param.partial[0].grpid == 8  # grpid 8 still waits
    n = len(s.driver.page_responses)
    assert t.p.write_fd(s.fault_fd, response(1)) == 8
    assert [r for _, r in s.driver.page_responses[n:]] == [IommuPageResponse(0, 7, SUCCESS)]
    t.mock_domain_replace(s.stdev, s.parent)  # IOPF off: the partial request is dropped
    assert dev.dev_iommu.fault_param is None
    s.check()
    t.close()
