"""``IOMMU_TEST_CMD`` on the mock platform: the selftest-only operations of
drivers/iommu/iommufd/selftest.c (6.12) the ported selftests use.

``struct iommu_test_cmd`` is ``size, op, id, __reserved``, a 48-byte union
at offset 16 and ``last`` at 64 (72 bytes, minimum 68). Mock devices are
made by MOCK_DOMAIN and go with their selftest object; accesses are handed
out as fds, as ``iommufd_test_create_access`` does, and the other access
operations take that fd as their id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..drivers.mock import MOCK_IO_PAGE_SIZE, MOCK_PFN_MASK, MockDirtyOps, MockDomainOps
from ..errors import (
    InvalidArgument,
    NoEntry,
    NotSupported,
    OutOfMemory,
    kernel_error,
)
from ..sizes import PAGE_SHIFT, PAGE_SIZE
from ..vfio.files import VfioFile
from . import uapi as u
from .objects import Access, Device, HwptPaging, Ioas, IommufdCtx, IommufdObject

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..machine import Process
    from .file import IommufdFile

__all__ = ["TEST_CMD", "test_cmd"]

TEST_CMD = struct.Struct("<IIII48sI4x")  # size, op, id, __reserved, union, last
TEST_CMD_MIN = 68  # offsetofend(last)
(OP_ADD_RESERVED, OP_MOCK_DOMAIN, OP_MD_CHECK_MAP, OP_MD_CHECK_REFS, OP_CREATE_ACCESS,
 OP_DESTROY_ACCESS_PAGES, OP_ACCESS_PAGES, OP_ACCESS_RW, OP_SET_TEMP_MEMORY_LIMIT,
 OP_MOCK_DOMAIN_REPLACE, OP_ACCESS_REPLACE_IOAS, OP_MOCK_DOMAIN_FLAGS, OP_DIRTY) = range(1, 14)
MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2
_DEVICE_FLAGS = (1 << 0) | (1 << 1)  # NO_DIRTY | HUGE_IOVA (6.12)
_CMD = u.Command("IOMMU_TEST_CMD", u.IOMMU_TEST_CMD, TEST_CMD, TEST_CMD_MIN)


@dataclass(eq=False, kw_only=True)
class SelftestDevice(IommufdObject):
    """``struct selftest_obj`` of type SELFTEST_OBJ_MOCK: a mock device bound to the ctx."""

    dev: DmaDevice = field(repr=False)
    idev: Device = field(repr=False)
    machine: Any = field(repr=False)

    def destroy(self, ctx: IommufdCtx) -> None:
        ctx.unbind(self.idev)
        self.machine.remove_device(self.dev)


class AccessFile(VfioFile):
    """The fd of a selftest access: its pinned items, released on close."""

    def __init__(self, ctx: IommufdCtx, ioas: Ioas, needs_pin: bool) -> None:
        self.ctx = ctx
        self.items: dict[int, tuple[int, int]] = {}  # id -> (iova, length)
        self.access: Access = ctx.access_create(
            ioas, self._unmap if needs_pin else None, needs_pin)
        self.needs_pin = needs_pin

    def _unmap(self, iova: int, length: int) -> None:
        """``iommufd_test_access_unmap``: unpin every item the range touches."""
        last = iova + length - 1
        for item_id, (start, n) in list(self.items.items()):
            if iova > start + n - 1 or last < start:
                continue
            self.ctx.access_unpin(self.access, start, n)
            del self.items[item_id]

    def release(self) -> None:
        """``iommufd_test_access_release`` → ``iommufd_access_destroy``."""
        if self.access.id in self.ctx.objects:
            del self.ctx.objects[self.access.id]
            self.access.destroy(self.ctx)


def test_cmd(file: IommufdFile, proc: Process, buf: bytearray) -> int:
    """``iommufd_test``: dispatch on ``op`` (EOPNOTSUPP for others)."""
    (_, op, id, rsvd, union, _last), usize = u.read_ucmd(buf, _CMD)
    ctx = file.ctx
    out: bytes | None = None
    if op == OP_ADD_RESERVED:
        start, length = struct.unpack_from("<QQ", union)
        file.ioas(id).iopt.space.reserve(start, start + length - 1, None)
    elif op in (OP_MOCK_DOMAIN, OP_MOCK_DOMAIN_FLAGS):
        flags = struct.unpack_from("<12xI", union)[0] if op == OP_MOCK_DOMAIN_FLAGS else 0
        out = struct.pack("<IIII", *_mock_domain(file, id, flags), flags)
    elif op == OP_MOCK_DOMAIN_REPLACE:
        stdev: SelftestDevice = ctx.get(id, SelftestDevice)
        (pt_id,) = struct.unpack_from("<I", union)
        out = struct.pack("<I", ctx.replace(stdev.idev, pt_id))
    elif op == OP_MD_CHECK_MAP:
        _check_map(ctx, proc, id, *struct.unpack_from("<QQQ", union))
    elif op == OP_MD_CHECK_REFS:
        _check_refs(proc, *struct.unpack_from("<QQI", union))
    elif op == OP_CREATE_ACCESS:
        (_, flags) = struct.unpack_from("<II", union)
        if flags & ~MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
            raise NotSupported(f"CREATE_ACCESS: flags {flags:#x}")
        af = AccessFile(ctx, file.ioas(id), bool(flags))
        out = struct.pack("<II", proc.install(af), flags)
    elif op == OP_DESTROY_ACCESS_PAGES:
        af = _access_file(proc, id)
        (item_id,) = struct.unpack_from("<I", union)
        item = af.items.pop(item_id, None)
        if item is None:
            raise NoEntry(f"DESTROY_ACCESS_PAGES: no item {item_id}")
        ctx.access_unpin(af.access, *item)
    elif op == OP_ACCESS_PAGES:
        flags, _, iova, length, uptr = struct.unpack_from("<IIQQQ", union)
        item_id = _access_pages(ctx, proc, _access_file(proc, id), flags, iova, length, uptr)
        out = struct.pack("<II", flags, item_id)
    elif op == OP_ACCESS_RW:
        iova, length, uptr, flags = struct.unpack_from("<QQQI", union)
        _access_rw(ctx, proc, _access_file(proc, id), iova, length, uptr, flags)
    elif op == OP_SET_TEMP_MEMORY_LIMIT:
        (limit,) = struct.unpack_from("<I", union)
        ctx.temp_memory_limit[0] = limit
    elif op == OP_ACCESS_REPLACE_IOAS:
        af = _access_file(proc, id)
        (ioas_id,) = struct.unpack_from("<I", union)
        ioas = file.ioas(ioas_id)
        af.access.destroy(ctx)
        ctx.objects.pop(af.access.id, None)
        af.items.clear()
        af.access = ctx.access_create(ioas, af._unmap if af.needs_pin else None, af.needs_pin)
    elif op == OP_DIRTY:
        flags, iova, length, page_size, uptr = struct.unpack_from("<I4xQQQQ", union)
        nr = _dirty(ctx, proc, id, iova, length, page_size, uptr)
        out = struct.pack("<I4xQQQQQ", flags, iova, length, page_size, uptr, nr)
    else:
        raise NotSupported(f"IOMMU_TEST_CMD: op {op}")
    if out is not None:
        union = out.ljust(48, b"\0")
        u.respond(buf, _CMD, usize, (usize, op, id, rsvd, union, 0))
    return 0


def _mock_domain(file: IommufdFile, pt_id: int, flags: int) -> tuple[int, int, int]:
    """``iommufd_test_mock_domain``: a mock device, bound and attached to ``pt_id``."""
    if flags & ~_DEVICE_FLAGS:
        raise InvalidArgument(f"MOCK_DOMAIN: device flags {flags:#x}")
    ctx = file.ctx
    dev = file.machine.add_mock_device(flags)
    try:
        idev = ctx.bind(dev)
    except Exception:
        file.machine.remove_device(dev)
        raise
    try:
        hwpt_id = ctx.attach(idev, pt_id)
    except Exception:
        ctx.unbind(idev)
        file.machine.remove_device(dev)
        raise
    stdev = SelftestDevice(dev=dev, idev=idev, machine=file.machine)
    ctx.add(stdev)
    return stdev.id, hwpt_id, idev.id


def _access_file(proc: Process, fd: int) -> AccessFile:
    f = proc.files.get(fd)
    if not isinstance(f, AccessFile):
        raise kernel_error(9, f"access fd {fd} is not an access")  # EBADF
    return f


def _user_pfns(proc: Process, uptr: int, length: int) -> np.ndarray:
    """The pfn of every 4K page of ``[uptr, +length)`` (faulted in, as GUP does)."""
    runs = proc.mm._runs(uptr & ~(PAGE_SIZE - 1), -(-(uptr % PAGE_SIZE + length) //
                                                     PAGE_SIZE) * PAGE_SIZE, False)
    return np.concatenate([np.arange(pa >> PAGE_SHIFT, (pa + n) >> PAGE_SHIFT,
                                     dtype=np.int64) for pa, n in runs])


def _check_map(ctx: IommufdCtx, proc: Process, hwpt_id: int, iova: int, length: int,
               uptr: int) -> None:
    """``iommufd_test_md_check_pa``: every 2K IO page maps the matching 2K of ``uptr``."""
    hwpt: HwptPaging = ctx.get(hwpt_id, HwptPaging)
    ops = hwpt.domain.ops
    if not isinstance(ops, MockDomainOps):
        raise InvalidArgument("MD_CHECK_MAP: not a mock domain")
    if iova % MOCK_IO_PAGE_SIZE or length % MOCK_IO_PAGE_SIZE or uptr % MOCK_IO_PAGE_SIZE:
        raise InvalidArgument("MD_CHECK_MAP: not 2K aligned")
    n = length // MOCK_IO_PAGE_SIZE
    pfns = _user_pfns(proc, uptr, length)
    byte = uptr % PAGE_SIZE + np.arange(n, dtype=np.int64) * MOCK_IO_PAGE_SIZE
    want = (pfns[byte // PAGE_SIZE] * PAGE_SIZE + byte % PAGE_SIZE) // MOCK_IO_PAGE_SIZE
    idx, vals = ops.pfns.present(iova // MOCK_IO_PAGE_SIZE, n)
    if len(idx) != n or not np.array_equal(
            (vals & np.uint64(MOCK_PFN_MASK)).astype(np.int64), want):
        raise InvalidArgument(f"MD_CHECK_MAP: [{iova:#x}, +{length:#x}) does not map "
                              f"{uptr:#x}")


def _check_refs(proc: Process, length: int, uptr: int, refs: int) -> None:
    """``iommufd_test_md_check_refs``: each page's pin count is ``refs`` (EIO if not)."""
    if length % PAGE_SIZE or uptr % PAGE_SIZE:
        raise InvalidArgument("MD_CHECK_REFS: not page aligned")
    pins = proc.machine.mem.pins
    for pfn in _user_pfns(proc, uptr, length).tolist():
        if pins.count(pfn) != refs:
            raise kernel_error(5, f"MD_CHECK_REFS: pfn {pfn:#x} has {pins.count(pfn)} pins, "
                               f"not {refs}")


def _access_pages(ctx: IommufdCtx, proc: Process, af: AccessFile, flags: int, iova: int,
                  length: int, uptr: int) -> int:
    """``iommufd_test_access_pages``: pin, check against ``uptr``, keep as an item."""
    if flags & ~MOCK_FLAGS_ACCESS_WRITE:
        raise NotSupported(f"ACCESS_PAGES: flags {flags:#x}")
    if not af.needs_pin:
        raise InvalidArgument("ACCESS_PAGES: the access was made without pin ops")
    pfns = ctx.access_pin(af.access, iova, length, bool(flags & MOCK_FLAGS_ACCESS_WRITE))
    if uptr and not np.array_equal(pfns, _user_pfns(proc, uptr, len(pfns) * PAGE_SIZE)):
        ctx.access_unpin(af.access, iova, length)
        raise InvalidArgument("ACCESS_PAGES: the pinned pages are not those of uptr")
    item_id = next(i for i in range(1, len(af.items) + 2) if i not in af.items)
    af.items[item_id] = (iova, length)
    return item_id


def _access_rw(ctx: IommufdCtx, proc: Process, af: AccessFile, iova: int, length: int,
               uptr: int, flags: int) -> None:
    """``iommufd_test_access_rw``: through a kernel buffer of at most 16 MiB."""
    if flags & ~(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH):
        raise NotSupported(f"ACCESS_RW: flags {flags:#x}")
    if length > 16 << 20:
        raise OutOfMemory(f"ACCESS_RW: {length:#x} bytes")
    write = bool(flags & MOCK_ACCESS_RW_WRITE)
    data = bytearray(proc.mm.read(uptr, length)) if write else bytearray(length)
    ctx.access_rw(af.access, iova, data, write)
    if not write:
        proc.mm.write(uptr, bytes(data))


def _dirty(ctx: IommufdCtx, proc: Process, hwpt_id: int, iova: int, length: int,
           page_size: int, uptr: int) -> int:
    """``iommufd_test_dirty``: set the mock's dirty bit of the entry at each page whose
    bit is set in the user bitmap; how many were set."""
    hwpt: HwptPaging = ctx.get(hwpt_id, HwptPaging)
    if not page_size or not length or iova % page_size or length % page_size or not uptr:
        raise InvalidArgument("DIRTY: bad range or page size")
    ops = hwpt.domain.dirty_ops
    if not isinstance(ops, MockDirtyOps) or not ops.tracking:
        raise InvalidArgument("DIRTY: the domain is not tracking dirty pages")
    npages = length // page_size
    raw = proc.mm.read(uptr, -(-npages // 64) * 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:npages]
    pages = np.flatnonzero(bits).astype(np.int64)
    return ops.set_dirty(hwpt.domain, iova + pages * page_size)
