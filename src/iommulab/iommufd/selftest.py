"""``IOMMU_TEST_CMD`` on the mock platform: the selftest-only operations of
drivers/iommu/iommufd/selftest.c (6.12; where 7.0 answers otherwise, as 7.0 does).

``struct iommu_test_cmd`` is ``size, op, id, __reserved``, a 48-byte union
at offset 16 and ``last`` at 64 (72 bytes, minimum 68). An operation that
answers copies the whole command back (``iommufd_ucmd_respond``): the
caller's bytes come back as they went in, with only the ``out_`` fields
set. Mock devices are made by MOCK_DOMAIN and go with their selftest
object; accesses are handed out as fds, as ``iommufd_test_create_access``
does, and the other access operations take that fd as their id.
MOCK_FLAGS_ACCESS_SYZ (syzkaller's "nth area + offset" IOVAs) is honoured
where the kernel honours it.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..drivers.mock import (
    IOMMU_VEVENTQ_TYPE_SELFTEST,
    MOCK_DEV_CACHE_ID_MAX,
    MOCK_IO_PAGE_SIZE,
    MOCK_PFN_MASK,
    MockDirtyOps,
    MockDomainOps,
    MockNestedDomain,
)
from ..drivers.mock_pt import MockPtDirtyOps, MockPtDomainOps
from ..errors import (
    BadAddress,
    InvalidArgument,
    IoError,
    KernelError,
    NoEntry,
    NotSupported,
    OutOfMemory,
    Overflow,
    kernel_error,
)
from ..iommu.iopf import (
    IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
    IOMMU_FAULT_PAGE_REQUEST_PASID_VALID,
    IOMMU_NO_PASID,
    AttachHandle,
    IopfFault,
    report_device_fault,
)
from ..kernel import LINUX_7_0
from ..mem.mm import access_ok, pfn_runs
from ..sizes import PAGE_SHIFT, PAGE_SIZE
from ..syscall.file import File
from . import uapi as u
from .iova_space import ULONG_MAX
from .objects import Access, Device, HwptNested, HwptPaging, Ioas, IommufdCtx, IommufdObject
from .pages import _BATCH_ELEMENT

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..syscall.process import Process
    from .file import IommufdFile
    from .io_pagetable import IoPagetable

__all__ = ["TEST_CMD", "TEST_OPS", "syz_conv_iova", "test_cmd"]

I64Array = npt.NDArray[np.int64]
U64Array = npt.NDArray[np.uint64]
_NO_PFNS = np.zeros(0, dtype=np.int64)

TEST_CMD = struct.Struct("<IIII48sI4x")  # size, op, id, __reserved, union, last
TEST_CMD_MIN = 68  # offsetofend(last)
(OP_ADD_RESERVED, OP_MOCK_DOMAIN, OP_MD_CHECK_MAP, OP_MD_CHECK_REFS, OP_CREATE_ACCESS,
 OP_DESTROY_ACCESS_PAGES, OP_ACCESS_PAGES, OP_ACCESS_RW, OP_SET_TEMP_MEMORY_LIMIT,
 OP_MOCK_DOMAIN_REPLACE, OP_ACCESS_REPLACE_IOAS, OP_MOCK_DOMAIN_FLAGS, OP_DIRTY,
 OP_MD_CHECK_IOTLB, OP_TRIGGER_IOPF, OP_DEV_CHECK_CACHE, OP_TRIGGER_VEVENT) = range(1, 18)
MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_SYZ = 1 << 16
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2
MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1  # 6.12 only
MOCK_FLAGS_DEVICE_PASID = 1 << 2  # 7.0 only
_MAX_ACCESS_LENGTH = 16 << 20  # the kvzalloc guard of ACCESS_PAGES and ACCESS_RW
_MAX_DIRTY_BITS = (16 << 20) * 8  # SZ_16M * BITS_PER_BYTE (6.12)
_DIRTY_CHUNK = 1 << 16  # bytes of the user's DIRTY bitmap read at a time (lab)
_INT_MAX = (1 << 31) - 1
_GUP_CHUNK = 512  # pages per get_user_pages call of the checks (lab: any bound works)
_SLOT_CLUSTER = 1 << 20  # slots looked up together by the 6.12 checks (lab)
_MAX_SLOT = 1 << 52  # 6.12 mock: slots * 2K stays a valid int64
_CMD = u.Command("IOMMU_TEST_CMD", u.IOMMU_TEST_CMD, TEST_CMD, TEST_CMD_MIN)


@dataclass(eq=False, kw_only=True)
class SelftestDevice(IommufdObject):
    """``struct selftest_obj`` of type TYPE_IDEV: a mock device bound to the ctx."""

    dev: DmaDevice = field(repr=False)
    idev: Device = field(repr=False)
    machine: Any = field(repr=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_selftest_destroy``: detach, unbind, unplug."""
        ctx.unbind(self.idev)
        mock_dev_destroy(self.machine, self.dev)


def mock_dev_destroy(machine: Any, dev: DmaDevice) -> None:
    """``mock_dev_destroy`` (``device_unregister``): the IOMMU lets the device go
    (``iommu_release_device`` at BUS_NOTIFY_REMOVED_DEVICE), then ``device_del`` sends
    the KOBJ_REMOVE uevent, whose buffers (``kobject_uevent_env``: the environment,
    then the device's path) are fail-nth points a failure of which ``device_del``
    ignores. (The netlink message is allocated only while a program listens for
    uevents, which the model does not know: left out.)"""
    machine.remove_device(dev)
    fail = machine.mem.fail_nth
    with fail.within("device_del"):
        if not fail.fails("kzalloc(kobj_uevent_env)"):
            fail.fails("kzalloc(kobject_get_path)")


class AccessFile(File):
    """``struct selftest_access``, the fd of a selftest access: its pinned items (ids
    from 0, never reused), released on close."""

    def __init__(self, ctx: IommufdCtx, needs_pin: bool) -> None:
        self.ctx = ctx
        self.needs_pin = needs_pin
        self.items: dict[int, tuple[int, int]] = {}  # id -> (iova, length)
        self.next_id = 0
        self.access: Access = ctx.access_create(self._unmap, needs_pin)

    def _unmap(self, iova: int, length: int) -> None:
        """``iommufd_test_access_unmap``: unpin every item the range touches."""
        last = iova + length - 1
        for item_id, (start, n) in list(self.items.items()):
            if iova > start + n - 1 or last < start:
                continue
            del self.items[item_id]
            self.ctx.access_unpin(self.access, start, n)

    def holds(self) -> list[File]:
        """The context's file (``iommufd_access_create``'s ``iommufd_ctx_get``)."""
        return [self.ctx.file] if self.ctx.file is not None else []

    def release(self) -> None:
        """``iommufd_test_staccess_release``: unpin everything, destroy the access."""
        self._unmap(0, ULONG_MAX)
        self.ctx.access_destroy(self.access)


@dataclass
class _Cmd:
    """The kernel's copy of the command: what :func:`_respond` writes back."""

    usize: int
    op: int
    id: int
    rsvd: int
    union: bytearray
    last: int

    def put(self, fmt: str, offset: int, *values: int) -> None:
        struct.pack_into(fmt, self.union, offset, *values)


def test_cmd(file: IommufdFile, proc: Process, buf: bytearray) -> int:
    """``iommufd_test``: dispatch on ``op`` (EOPNOTSUPP for others); the operations that
    answer copy the whole command back."""
    (_, op, id, rsvd, union, last), usize = u.read_ucmd(buf, _CMD)
    cmd = _Cmd(usize, op, id, rsvd, bytearray(union), last)
    handler = _HANDLERS.get(op)
    if handler is None or (op in OPS_7_0 and file.machine.kernel < LINUX_7_0):
        raise NotSupported(f"IOMMU_TEST_CMD: op {op}")
    if handler(file, proc, cmd):
        try:
            u.respond(buf, _CMD, usize, (usize, op, id, rsvd, bytes(cmd.union), last))
        except KernelError:
            _undo_unanswered(file, cmd)
            raise
    return 0


def _undo_unanswered(file: IommufdFile, cmd: _Cmd) -> None:
    """What the kernel's error path after a failed ``iommufd_ucmd_respond`` undoes:
    MOCK_DOMAIN detaches, unbinds and destroys its device and aborts the selftest object
    (``out_detach`` ... ``out_sobj``: the id is free again). CREATE_ACCESS's
    ``out_destroy`` is the caller's fd table's to do: the file it installed is put
    (under exec the fd is only installed once the call succeeds)."""
    if cmd.op in (OP_MOCK_DOMAIN, OP_MOCK_DOMAIN_FLAGS):
        (stdev_id,) = struct.unpack_from("<I", cmd.union)
        file.ctx.destroy(stdev_id)


# Each handler returns whether the command is copied back.

def _add_reserved(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_add_reserved``: EINVAL for a length of 0, EOVERFLOW when the range
    wraps, then the IOAS."""
    start, length = struct.unpack_from("<QQ", cmd.union)
    if not length:
        raise InvalidArgument("ADD_RESERVED: length 0")
    if start + length - 1 > ULONG_MAX:
        raise Overflow(f"ADD_RESERVED: [{start:#x}, +{length:#x}) wraps")
    file.ioas(cmd.id).iopt.space.reserve(start, start + length - 1, None)
    return False


def _mock_domain(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_mock_domain``: the selftest object's id is taken first, then a mock
    device (EINVAL for an unknown device flag: 6.12 knows NO_DIRTY and HUGE_IOVA, 7.0
    NO_DIRTY and PASID), bound and attached to ``id``; out: the three ids."""
    ctx = file.ctx
    flags = struct.unpack_from("<12xI", cmd.union)[0] if cmd.op == OP_MOCK_DOMAIN_FLAGS else 0
    new = file.machine.kernel >= LINUX_7_0
    valid = MOCK_FLAGS_DEVICE_NO_DIRTY | (MOCK_FLAGS_DEVICE_PASID if new else
                                          MOCK_FLAGS_DEVICE_HUGE_IOVA)
    stdev_id = ctx.object_alloc("selftest_obj")
    try:
        if flags & ~valid:
            raise InvalidArgument(f"MOCK_DOMAIN: device flags {flags:#x}")
        if flags & MOCK_FLAGS_DEVICE_PASID:
            raise NotSupported("MOCK_DOMAIN: PASID-capable mock devices are not modelled")
        stdev = _new_mock_device(file, cmd.id, flags)
    except KernelError:
        ctx.abort_id(stdev_id)
        raise
    ctx.add(stdev, stdev_id)
    assert stdev.idev.hwpt is not None
    cmd.put("<III", 0, stdev.id, stdev.idev.hwpt.id, stdev.idev.id)
    return True


def _new_mock_device(file: IommufdFile, pt_id: int, flags: int) -> SelftestDevice:
    """``mock_dev_create`` (the device, ``kzalloc``; its name, ``dev_set_name``; the
    driver core's ``device_add``, one point here for its kobject and sysfs allocations,
    then the IOMMU probe), bound and attached; undone on an error."""
    ctx = file.ctx
    fail = file.machine.mem.fail_nth
    fail.check("kzalloc(mock_dev)")
    fail.check("kvasprintf(dev_set_name)")
    fail.check("device_add")
    dev = file.machine.add_mock_device(flags)
    try:
        idev = ctx.bind(dev, mock=True)
    except KernelError:
        mock_dev_destroy(file.machine, dev)
        raise
    try:
        ctx.attach(idev, pt_id)
    except KernelError:
        ctx.unbind(idev)
        mock_dev_destroy(file.machine, dev)
        raise
    return SelftestDevice(dev=dev, idev=idev, machine=file.machine)


def _mock_domain_replace(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_mock_domain_replace``: out: the HWPT now used."""
    stdev: SelftestDevice = file.ctx.get(cmd.id, SelftestDevice)
    (pt_id,) = struct.unpack_from("<I", cmd.union)
    cmd.put("<I", 0, file.ctx.replace(stdev.idev, pt_id))
    return True


def _check_map(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_md_check_pa``: every IO page of ``[iova, +length)`` maps the same
    bytes as ``uptr``; EINVAL at the first that does not, the GUP error at the first
    user page that cannot be had. 6.12 checks 2K alignment before looking the HWPT up
    and reads the mock's slots; 7.0 looks it up first, checks alignment to the
    domain's smallest page and compares the domain's ``iova_to_phys`` (the OA with
    the offset into the leaf). A length of 0 checks nothing."""
    iova, length, uptr = struct.unpack_from("<QQQ", cmd.union)
    new = file.machine.kernel >= LINUX_7_0
    if not new:
        _check_aligned("MD_CHECK_MAP", MOCK_IO_PAGE_SIZE, iova, length, uptr)
    hwpt = _mock_hwpt(file.ctx, cmd.id)
    domain = hwpt.domain
    page = domain.pgsize_bitmap & -domain.pgsize_bitmap if new else MOCK_IO_PAGE_SIZE
    if new:
        _check_aligned("MD_CHECK_MAP", page, iova, length, uptr)
    ops = domain.ops
    done = 0
    for pfns, err in _user_pages(proc, uptr, page, length // page):
        offsets = np.arange(len(pfns), dtype=np.uint64) * np.uint64(page)
        iovas = np.uint64(iova + done * page & ULONG_MAX) + offsets  # wraps as the kernel's
        first_offset = (uptr + done * page) % PAGE_SIZE  # a Python int: any uptr
        want = pfns * PAGE_SIZE + (first_offset + offsets.astype(np.int64)) % PAGE_SIZE
        got = _pt_iova_to_phys(ops, iovas) if isinstance(ops, MockPtDomainOps) else \
            _slot_phys(ops, iovas)
        bad = np.flatnonzero(got != want)
        if len(bad):
            at = done + int(bad[0])
            raise InvalidArgument(f"MD_CHECK_MAP: IOVA {iova + at * page:#x} does not map "
                                  f"the bytes at {uptr + at * page:#x}")
        if err is not None:
            raise err
        done += len(pfns)
    return False


def _slot_phys(ops: object, iovas: U64Array) -> I64Array:
    """6.12: the address in each IOVA's xarray slot (2K aligned); -1, which never
    matches, where the slot is empty. The slots are looked up a cluster at a time, so
    IOVAs that wrapped at 2^64 cost no walk over the slots between."""
    assert isinstance(ops, MockDomainOps)
    phys = np.full(len(iovas), -1, dtype=np.int64)
    all_slots = (iovas // np.uint64(MOCK_IO_PAGE_SIZE)).astype(np.int64)
    for at in _clusters(all_slots):
        slots = all_slots[at]
        first = int(slots.min())
        idx, vals = ops.pfns.present(first, int(slots.max()) - first + 1)
        if len(idx):
            k = np.minimum(np.searchsorted(idx, slots), len(idx) - 1)
            found = idx[k] == slots
            pfn = (vals[k[found]] & np.uint64(MOCK_PFN_MASK)).astype(np.int64)
            phys[at[found]] = pfn * MOCK_IO_PAGE_SIZE
    return phys


def _clusters(slots: I64Array) -> list[I64Array]:
    """The positions of ``slots`` in clusters whose values lie within
    :data:`_SLOT_CLUSTER` of each other (sorted within a cluster): the slots of a walk
    are consecutive but for where the IOVA wrapped at 2^64."""
    order = np.argsort(slots, kind="stable")
    cut = np.flatnonzero(np.diff(slots[order]) > _SLOT_CLUSTER) + 1
    return [part for part in np.split(order, cut) if len(part)]


def _pt_iova_to_phys(ops: MockPtDomainOps, iovas: U64Array) -> I64Array:
    """7.0: generic_pt's ``iova_to_phys`` of each IOVA (0 where nothing is mapped, -ERANGE
    as a phys_addr_t, which never matches, past the table)."""
    inside = (iovas >> np.uint64(ops.pt.max_vasz_lg2)) == 0
    phys = np.full(len(iovas), -34, dtype=np.int64)
    phys[inside] = ops.pt.iova_to_phys_many(iovas[inside].astype(np.int64))
    return phys


def _check_refs(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_md_check_refs``: every page of ``[uptr, +length)`` that is not part
    of a compound page (THP, hugetlb) is pinned ``refs`` times (EIO at the first that is
    not); the GUP error at the first page that cannot be had. A length of 0 checks
    nothing."""
    length, uptr, refs = struct.unpack_from("<QQI", cmd.union)
    _check_aligned("MD_CHECK_REFS", PAGE_SIZE, 0, length, uptr)
    pins = proc.machine.mem.pins
    for pfns, err in _user_pages(proc, uptr, PAGE_SIZE, length // PAGE_SIZE):
        counts = np.concatenate([pins.counts(pfn, n) for pfn, n in pfn_runs(pfns)]) \
            if len(pfns) else np.zeros(0, dtype=np.int32)
        bad = np.flatnonzero((counts != refs) & ~_compound(proc, pfns))
        if len(bad):
            pfn = int(pfns[bad[0]])
            raise IoError(f"MD_CHECK_REFS: pfn {pfn:#x} has {pins.count(pfn)} pins, "
                          f"not {refs}")
        if err is not None:
            raise err
    return False


def _create_access(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_create_access``: EOPNOTSUPP for an unknown flag; the selftest
    access and its file, then the fd (any failure to get one is ENOMEM there, EMFILE
    included), then the access is made and attached to ``id`` (ENOENT destroys it
    again); out: its fd."""
    (_, flags) = struct.unpack_from("<II", cmd.union)
    if flags & ~MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise NotSupported(f"CREATE_ACCESS: flags {flags:#x}")
    fail = file.machine.mem.fail_nth
    fail.check("kzalloc(selftest_access)")  # iommufd_test_alloc_access
    fail.check("d_alloc_pseudo(anon_inode_getfile)")
    fail.check("alloc_empty_file(anon_inode_getfile)")
    try:
        fd = proc.get_unused_fd()
    except KernelError as e:
        raise OutOfMemory(f"CREATE_ACCESS: no fd ({e})") from e
    af = AccessFile(file.ctx, bool(flags))
    try:
        file.ctx.access_attach(af.access, cmd.id)
    except KernelError:
        file.ctx.access_destroy(af.access)
        raise
    cmd.put("<I", 0, fd)
    proc.fd_install(fd, af)
    return True


def _destroy_access_pages(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_access_item_destroy``: ENOENT for an item the access has not."""
    af = _access_file(proc, cmd.id)
    (item_id,) = struct.unpack_from("<I", cmd.union)
    item = af.items.pop(item_id, None)
    if item is None:
        raise NoEntry(f"DESTROY_ACCESS_PAGES: no item {item_id}")
    af.ctx.access_unpin(af.access, *item)
    return False


def _access_pages(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_access_pages``: ENOMEM past 16 MiB, EOPNOTSUPP for an unknown flag
    or an access made without pin ops; pin ``[iova, +length)``, then (unless ``uptr``
    is 0) check each page is the one at ``uptr`` less the IOVA's page offset (EBADE
    otherwise, the GUP error for a page that cannot be had; the pins go again); keep
    it as an item; out: the item's id."""
    flags, _, iova, length, uptr = struct.unpack_from("<IIQQQ", cmd.union)
    if length > _MAX_ACCESS_LENGTH:
        raise OutOfMemory(f"ACCESS_PAGES: length {length:#x}")
    if flags & ~(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ):
        raise NotSupported(f"ACCESS_PAGES: flags {flags:#x}")
    af = _access_file(proc, cmd.id)
    if not af.needs_pin:
        raise NotSupported("ACCESS_PAGES: the access was made without pin ops")
    ctx = af.ctx
    if flags & MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_access_iova(af.access, iova)
    npages = (-(-(iova + length) // PAGE_SIZE)) - iova // PAGE_SIZE
    file.machine.mem.fail_nth.kvmalloc("access_pages pages", npages * 8)
    pfns = ctx.access_pin(af.access, iova, length, bool(flags & MOCK_FLAGS_ACCESS_WRITE))
    try:
        if uptr:
            _check_pages(proc, uptr - iova % PAGE_SIZE & ULONG_MAX, pfns)
        file.machine.mem.fail_nth.check("kzalloc(selftest_access_item)")
    except KernelError:
        ctx.access_unpin(af.access, iova, length)
        raise
    item_id = af.next_id
    af.next_id = (af.next_id + 1) & 0xFFFFFFFF
    af.items[item_id] = (iova, length)
    cmd.put("<I", 4, item_id)
    return True


def _check_pages(proc: Process, uptr: int, pfns: I64Array) -> None:
    """``iommufd_test_check_pages``: page by page from ``uptr``; the GUP error, or EBADE
    at the first page that is not the pinned one."""
    done = 0
    for got, err in _user_pages(proc, uptr, PAGE_SIZE, len(pfns)):
        bad = np.flatnonzero(got != pfns[done:done + len(got)])
        if len(bad):
            at = done + int(bad[0])
            raise kernel_error(errno.EBADE, f"ACCESS_PAGES: page {at} is not the one at "
                               f"{uptr + at * PAGE_SIZE & ULONG_MAX:#x}")
        if err is not None:
            raise err
        done += len(got)


def _access_rw(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_access_rw``: ENOMEM past 16 MiB, EOPNOTSUPP for an unknown flag;
    through a kernel buffer, the user's bytes read before the access (EFAULT) and
    written after it."""
    iova, length, uptr, flags = struct.unpack_from("<QQQI", cmd.union)
    if length > _MAX_ACCESS_LENGTH:
        raise OutOfMemory(f"ACCESS_RW: length {length:#x}")
    if flags & ~(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ):
        raise NotSupported(f"ACCESS_RW: flags {flags:#x}")
    af = _access_file(proc, cmd.id)
    write = bool(flags & MOCK_ACCESS_RW_WRITE)
    file.machine.mem.fail_nth.kvmalloc("access_rw tmp", length)
    data = bytearray(proc.mm.read(uptr, length)) if write else bytearray(length)
    if flags & MOCK_FLAGS_ACCESS_SYZ:
        iova = _syz_access_iova(af.access, iova)
    af.ctx.access_rw(af.access, iova, data, write, mm=proc.mm,
                     slow=bool(flags & MOCK_ACCESS_RW_SLOW_PATH))
    if not write:
        proc.mm.write(uptr, bytes(data))
    return False


def _set_temp_memory_limit(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """EINVAL below one batch element (``sizeof(unsigned long) + sizeof(u32)``)."""
    (limit,) = struct.unpack_from("<I", cmd.union)
    if limit < _BATCH_ELEMENT:
        raise InvalidArgument(f"SET_TEMP_MEMORY_LIMIT: {limit} is below {_BATCH_ELEMENT}")
    file.ctx.temp_memory_limit[0] = limit
    return False


def _access_replace_ioas(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_access_replace_ioas`` / ``iommufd_access_replace``: the same access
    moves to another IOAS of its own context (``access->ictx``, whichever /dev/iommu
    the command came through: an id of another file's IOAS is looked up there, ENOENT
    if it has none); its items are unpinned on the way."""
    af = _access_file(proc, cmd.id)
    (ioas_id,) = struct.unpack_from("<I", cmd.union)
    af.ctx.access_replace(af.access, ioas_id)
    return False


def _dirty(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_dirty``: EINVAL for a bad range or page size, then the mock HWPT,
    EINVAL unless it tracks dirty pages; the kernel's copy of the user bitmap (``max``
    bits; 7.0's ``kvzalloc`` ENOMEM past INT_MAX bytes or the free memory), EFAULT if
    it cannot all be read; each set bit marks a page dirty. 6.12 refuses more than
    16M * 8 bits first (EOVERFLOW), looks the slot up at ``iova / page_size`` (right
    only for a page_size of 2K, a kernel wart kept) and counts the slots it found;
    7.0 marks ``iova + i * page_size`` (wrapping at 2^64) and counts every set bit.
    Out: the count. The model reads the bitmap a chunk at a time."""
    _, iova, length, page_size, uptr = struct.unpack_from("<I4xQQQQ", cmd.union)
    if not page_size or not length or iova % page_size or length % page_size or not uptr:
        raise InvalidArgument("DIRTY: bad range or page size")
    nbits = length // page_size
    new = file.machine.kernel >= LINUX_7_0
    if not new and nbits > _MAX_DIRTY_BITS:
        raise Overflow(f"DIRTY: {nbits} bits")
    hwpt = _mock_hwpt(file.ctx, cmd.id)
    ops = hwpt.domain.dirty_ops
    if not isinstance(ops, MockDirtyOps | MockPtDirtyOps) or not ops.tracking:
        raise InvalidArgument("DIRTY: the domain is not tracking dirty pages")
    _kvzalloc(file.machine, -(-nbits // 64) * 8, "DIRTY: the bitmap")
    file.machine.mem.fail_nth.kvmalloc("dirty bitmap", -(-nbits // 64) * 8)
    nbytes = -(-nbits // 8)
    if not access_ok(uptr, nbytes) or not _user_mapped(proc, uptr, nbytes):
        raise BadAddress(f"DIRTY: copy_from_user of {nbytes:#x} bytes at {uptr:#x}")
    count = 0
    for at in range(0, nbytes, _DIRTY_CHUNK):
        raw = proc.mm.read(uptr + at, min(_DIRTY_CHUNK, nbytes - at))
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        pages = np.flatnonzero(bits[:nbits - 8 * at]).astype(np.uint64) + np.uint64(8 * at)
        iovas = np.uint64(iova) + pages * np.uint64(page_size)  # unsigned long: wraps
        if isinstance(ops, MockPtDirtyOps):
            ops.set_dirty(hwpt.domain, iovas.view(np.int64))  # past 2^63: outside it
            count += len(pages)
        else:
            slots = iovas // np.uint64(page_size)  # cur / page_size
            held: I64Array = slots[slots < np.uint64(_MAX_SLOT)].astype(np.int64)
            for part in _clusters(held):  # past _MAX_SLOT no slot can be held
                count += ops.set_dirty(hwpt.domain, held[part] * MOCK_IO_PAGE_SIZE)
    cmd.put("<Q", 40, count)
    return True


def _kvzalloc(machine: Any, nbytes: int, what: str) -> None:
    """``kvzalloc``'s refusal: ENOMEM past INT_MAX bytes (``__kvmalloc_node``) or past
    what the machine's free memory could give."""
    if nbytes > _INT_MAX or nbytes > machine.mem.frames.free_frames * PAGE_SIZE:
        raise OutOfMemory(f"{what}: kvzalloc of {nbytes:#x} bytes")


def _user_mapped(proc: Process, addr: int, n: int) -> bool:
    """Whether mappings cover ``[addr, addr + n)`` without a hole (where
    ``copy_from_user`` would fault), without touching their pages. O(mappings)."""
    pos, end = addr, addr + n
    while pos < end:
        vma = proc.mm.find_vma(pos)
        if vma is None:
            return False
        pos = vma.end
    return True


def _check_iotlb(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_md_check_iotlb``: the id must be a nested HWPT
    (``get_md_pagetable_nested``: ``iommufd_get_object``, ENOENT) of the mock (EINVAL);
    EINVAL for an entry past ``MOCK_NESTED_DOMAIN_IOTLB_ID_MAX`` or one that does not
    hold ``iotlb``. 7.0's nested HWPTs are not modelled: there it is always ENOENT."""
    file.ctx.get_object_should_fail()
    hwpt = file.ctx.objects.get(cmd.id)
    if not isinstance(hwpt, HwptNested):
        raise NoEntry(f"MD_CHECK_IOTLB: no nested HWPT {cmd.id}")
    if not isinstance(hwpt.domain, MockNestedDomain):
        raise InvalidArgument(f"MD_CHECK_IOTLB: HWPT {cmd.id} is not a mock nested domain")
    iotlb_id, iotlb = struct.unpack_from("<II", cmd.union)
    if iotlb_id >= len(hwpt.domain.iotlb) or int(hwpt.domain.iotlb[iotlb_id]) != iotlb:
        raise InvalidArgument(f"MD_CHECK_IOTLB: entry {iotlb_id} is not {iotlb:#x}")
    return False


def _trigger_iopf(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_trigger_iopf``: ENOENT for no such device; 6.12 then refuses one
    that is not a mock device (EINVAL), 7.0 reports the fault on any device. A page
    request (LAST_PAGE; PASID_VALID unless ``pasid`` is 0) with the command's pasid,
    grpid, perm and addr is reported for the device (:func:`~iommulab.iommu.iopf.
    report_device_fault`): with a fault queue on the HWPT its group is attached to, the
    queue gets it; if nothing takes it the driver answers it INVALID. Success either
    way: the report's answer is not looked at. Nothing is copied back."""
    dev_id, pasid, grpid, perm, addr = struct.unpack_from("<IIIIQ", cmd.union)
    ctx = file.ctx
    idev: Device = ctx.get(dev_id, Device)
    mock = not idev.holds_ctx  # iommufd_selftest_is_mock_dev: only they leave the ctx alone
    if not mock and file.machine.kernel < LINUX_7_0:
        raise InvalidArgument(f"TRIGGER_IOPF: device {dev_id} is not a mock device")
    flags = IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
    if pasid != IOMMU_NO_PASID:
        flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
    group = idev.dev.group

    def handle_get(want_pasid: int, type: int) -> AttachHandle | None:
        """``iommu_attach_handle_get``: only PASID 0 attachments are modelled."""
        handle = ctx.attach_handles.get(group.id) if group is not None and \
            want_pasid == IOMMU_NO_PASID else None
        if handle is not None and type and handle.domain.type != type:
            return None  # EBUSY
        return handle

    if idev.dev.dev_iommu is not None and \
            hasattr(idev.dev.dev_iommu.driver, "page_response"):
        report_device_fault(idev.dev, IopfFault(flags, pasid, grpid, perm, addr),
                            handle_get, file.machine.mem.fail_nth)
    return False


def _dev_check_cache(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_dev_check_cache`` (7.0): the device (ENOENT), then EINVAL for a
    cache id past ``MOCK_DEV_CACHE_ID_MAX`` or an entry that does not hold ``cache``."""
    idev: Device = file.ctx.get(cmd.id, Device)
    cache_id, cache = struct.unpack_from("<II", cmd.union)
    assert idev.dev.dev_iommu is not None
    mdev = idev.dev.dev_iommu.priv
    if cache_id > MOCK_DEV_CACHE_ID_MAX or int(mdev.cache[cache_id]) != cache:
        raise InvalidArgument(f"DEV_CHECK_CACHE: entry {cache_id} is not {cache:#x}")
    return False


def _trigger_vevent(file: IommufdFile, proc: Process, cmd: _Cmd) -> bool:
    """``iommufd_test_trigger_vevent`` (7.0): the device (ENOENT); ENOENT unless it is
    attached to a nested domain of a mock vIOMMU with a vDEVICE there (``mdev->viommu``
    and ``vdev_id``, set by ``mock_domain_nop_attach``); then a ``struct
    iommu_viommu_event_selftest`` with the virtual id reported as
    IOMMU_VEVENTQ_TYPE_SELFTEST (EOPNOTSUPP without such a vEVENTQ, ENOMEM when the
    event could not be allocated)."""
    (dev_id,) = struct.unpack_from("<I", cmd.union)
    idev: Device = file.ctx.get(dev_id, Device)
    assert idev.dev.dev_iommu is not None
    mdev = idev.dev.dev_iommu.priv
    viommu = getattr(mdev, "viommu", None)
    if viommu is None or not mdev.vdev_id:
        raise NoEntry(f"TRIGGER_VEVENT: device {dev_id} is on no mock vIOMMU")
    viommu.report_event(IOMMU_VEVENTQ_TYPE_SELFTEST, struct.pack("<I", mdev.vdev_id),
                        file.machine.mem.fail_nth)
    return False


#: the ops 6.12's ``iommufd_test`` lacks (EOPNOTSUPP there)
OPS_7_0 = (OP_DEV_CHECK_CACHE, OP_TRIGGER_VEVENT)

_HANDLERS = {
    OP_ADD_RESERVED: _add_reserved, OP_MOCK_DOMAIN: _mock_domain,
    OP_MOCK_DOMAIN_FLAGS: _mock_domain, OP_MOCK_DOMAIN_REPLACE: _mock_domain_replace,
    OP_MD_CHECK_MAP: _check_map, OP_MD_CHECK_REFS: _check_refs,
    OP_MD_CHECK_IOTLB: _check_iotlb, OP_CREATE_ACCESS: _create_access,
    OP_ACCESS_REPLACE_IOAS: _access_replace_ioas, OP_ACCESS_PAGES: _access_pages,
    OP_ACCESS_RW: _access_rw, OP_DESTROY_ACCESS_PAGES: _destroy_access_pages,
    OP_SET_TEMP_MEMORY_LIMIT: _set_temp_memory_limit, OP_DIRTY: _dirty,
    OP_TRIGGER_IOPF: _trigger_iopf, OP_DEV_CHECK_CACHE: _dev_check_cache,
    OP_TRIGGER_VEVENT: _trigger_vevent,
}
#: the IOMMU_TEST_CMD ops ``iommufd_test`` answers (the others are EOPNOTSUPP)
TEST_OPS: tuple[int, ...] = tuple(_HANDLERS)


# -- helpers ---------------------------------------------------------------------------

def _check_aligned(what: str, page: int, iova: int, length: int, uptr: int) -> None:
    """EINVAL unless ``iova``, ``length`` and ``uptr`` are multiples of ``page`` and
    ``uptr + length`` does not wrap."""
    if iova % page or length % page or uptr % page or uptr + length > ULONG_MAX:
        raise InvalidArgument(f"{what}: [{iova:#x}, +{length:#x}) at {uptr:#x} is not "
                              f"{page:#x} aligned")


def _mock_hwpt(ctx: IommufdCtx, hwpt_id: int) -> HwptPaging:
    """``get_md_pagetable``: ENOENT for no paging HWPT, EINVAL for one not of the mock."""
    hwpt: HwptPaging = ctx.get(hwpt_id, HwptPaging)
    if not isinstance(hwpt.domain.ops, MockDomainOps | MockPtDomainOps):
        raise InvalidArgument(f"HWPT {hwpt_id} is not a mock domain")
    return hwpt


def _access_file(proc: Process, fd: int) -> AccessFile:
    """``iommufd_access_get``: EBADFD for a closed fd or a file that is no access."""
    f = proc.fget(fd)
    if not isinstance(f, AccessFile):
        raise kernel_error(errno.EBADFD, f"access fd {fd} is not a selftest access")
    return f


def _user_pages(proc: Process, uptr: int, step: int, n: int
                ) -> Iterator[tuple[I64Array, KernelError | None]]:
    """``get_user_pages_fast`` of the page of each address ``uptr + i * step`` for ``i <
    n`` (``step`` at most a page; the address wraps at 2^64 as a ``void __user *``
    does), faulting them in, as the selftest's checks step through user memory: a
    chunk at a time (:data:`_GUP_CHUNK` pages, one
    :meth:`~iommulab.mem.mm.MmStruct.get_user_pages` each), the PFNs of the chunk's
    addresses up to the first whose page cannot be had and EFAULT for that one (then
    nothing more). So ``n`` sizes nothing: the work ends where the user's memory
    does, or where the caller stops at a mismatch."""
    per = _GUP_CHUNK * PAGE_SIZE // step
    done = 0
    while done < n:
        count = min(per, n - done)
        base = (uptr + done * step) & ULONG_MAX
        pages = (base % PAGE_SIZE + np.arange(count, dtype=np.int64) * step) >> PAGE_SHIFT
        try:
            got = proc.mm.get_user_pages(base - base % PAGE_SIZE, int(pages[-1]) + 1)
        except BadAddress as e:
            yield _NO_PFNS, e
            return
        ok = int(np.searchsorted(pages, len(got)))  # the addresses whose page was had
        if ok < count:
            yield got[pages[:ok]], BadAddress(
                f"GUP: nothing at {base + ok * step & ULONG_MAX:#x}")
            return
        yield got[pages], None
        done += count


def _compound(proc: Process, pfns: I64Array) -> npt.NDArray[np.bool_]:
    """``PageCompound`` of each page: part of a large anonymous folio (THP, hugetlb), or
    of a hugetlb memfd a VMA of the process maps."""
    out = proc.mm.anon.compound(pfns)
    for vma in proc.mm.vmas:
        if vma.file is not None and vma.file.order:
            out |= vma.file.contains(pfns)
    return out


def syz_conv_iova(iopt: IoPagetable, iova: int) -> int:
    """``__iommufd_test_syz_conv_iova``: ``iova`` read as syzkaller's (u32 nth area, u32
    offset) pair; the IOVA ``offset`` bytes into the nth area (an unsigned long sum,
    which wraps), 0 if there is none."""
    nth, offset = iova & 0xFFFFFFFF, iova >> 32
    areas = iopt.areas()
    return (areas[nth].iova + offset) & ULONG_MAX if nth < len(areas) else 0


def _syz_access_iova(access: Access, iova: int) -> int:
    """``iommufd_test_syz_conv_iova``: 0 for a detached access."""
    return syz_conv_iova(access.ioas.iopt, iova) if access.ioas is not None else 0


def copy_syz_src_iova(ctx: IommufdCtx, src_id: int, flags: int, src_iova: int
                      ) -> tuple[int, int]:
    """``iommufd_test_syz_conv_iova_id`` for IOAS_COPY: with MOCK_FLAGS_ACCESS_SYZ the
    flag is dropped and ``src_iova`` converted in the source IOAS (left as it is if
    there is no such IOAS)."""
    if not flags & MOCK_FLAGS_ACCESS_SYZ:
        return flags, src_iova
    flags &= ~MOCK_FLAGS_ACCESS_SYZ
    ioas = ctx.objects.get(src_id)
    if isinstance(ioas, Ioas):
        src_iova = syz_conv_iova(ioas.iopt, src_iova)
    return flags, src_iova
