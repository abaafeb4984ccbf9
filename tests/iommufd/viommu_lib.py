"""Helpers for Linux 7.0's vIOMMU commands, packed as a VMM packs them."""

from __future__ import annotations

import struct

from iommulab.iommufd import uapi as u

from .selftest_lib import PAGE_SIZE, Selftest

VIOMMU_TYPE_SELFTEST = 0xDEADBEEF  # iommufd_test.h
VIOMMU_INV_SELFTEST, VIOMMU_INV_SELFTEST_INVALID = 0xDEADBEEF, 0xDADBEEF
VEVENTQ_TYPE_SELFTEST = 0xBEEFBEEF
DEV_CACHE_DEFAULT = 0xBADDAD  # IOMMU_TEST_DEV_CACHE_DEFAULT
OP_DEV_CHECK_CACHE, OP_TRIGGER_VEVENT = 16, 17


def viommu_alloc(t: Selftest, dev: int, hwpt: int, type: int = VIOMMU_TYPE_SELFTEST, *,
                 flags: int = 0, data_len: int = 0, data_uptr: int = 0, rsvd: int = 0) -> int:
    out = t.ioctl(u.IOMMU_VIOMMU_ALLOC, u.VIOMMU_ALLOC.pack(
        40, flags, type, dev, hwpt, 0, data_len, rsvd, data_uptr))
    return int(u.VIOMMU_ALLOC.unpack(out)[5])


def vdevice_alloc(t: Selftest, viommu: int, dev: int, virt_id: int) -> int:
    out = t.ioctl(u.IOMMU_VDEVICE_ALLOC, u.VDEVICE_ALLOC.pack(24, viommu, dev, 0, virt_id))
    return int(u.VDEVICE_ALLOC.unpack(out)[3])


def veventq_alloc(t: Selftest, viommu: int, type: int = VEVENTQ_TYPE_SELFTEST,
                  depth: int = 2, *, flags: int = 0, rsvd: int = 0) -> tuple[int, int]:
    """(vEVENTQ id, its fd)."""
    out = t.ioctl(u.IOMMU_VEVENTQ_ALLOC, u.VEVENTQ_ALLOC.pack(
        32, flags, viommu, type, depth, 0, 0, rsvd))
    fields = u.VEVENTQ_ALLOC.unpack(out)
    return int(fields[5]), int(fields[6])


def invalidate(t: Selftest, id: int, entries: bytes, *, data_type: int, entry_len: int,
               num: int | None = None, null: bool = False) -> tuple[int, int]:
    """HWPT_INVALIDATE of ``entries`` (``num`` of ``entry_len`` bytes) at ``id``, with a
    NULL ``data_uptr`` when ``null``: (errno or 0, ``entry_num`` out)."""
    uptr = t.p.mmap(PAGE_SIZE)
    t.p.write(uptr, entries)
    n = len(entries) // entry_len if num is None else num
    buf = bytearray(u.HWPT_INVALIDATE.pack(32, id, 0 if null else uptr, data_type,
                                           entry_len, n, 0))
    err = 0
    try:
        t.p.ioctl(t.fd, u.IOMMU_HWPT_INVALIDATE, buf)
    except OSError as e:
        err = e.errno or 0
    t.p.munmap(uptr, PAGE_SIZE)
    return err, int(u.HWPT_INVALIDATE.unpack(buf)[5])


def viommu_inv(*cmds: tuple[int, int, int]) -> bytes:
    """``struct iommu_viommu_invalidate_selftest`` entries (flags, vdev_id, cache_id)."""
    return b"".join(struct.pack("<III", *c) for c in cmds)


def check_cache(t: Selftest, dev: int, values: tuple[int, ...]) -> None:
    """DEV_CHECK_CACHE of each entry: it holds ``values[i]`` (and not anything else)."""
    import errno

    from ..helpers import expect_errno
    for i, want in enumerate(values):
        t.test_cmd(OP_DEV_CHECK_CACHE, dev, struct.pack("<II", i, want))
        expect_errno(errno.EINVAL, t.test_cmd, OP_DEV_CHECK_CACHE, dev,
                     struct.pack("<II", i, want ^ 1))


def read_vevents(t: Selftest, fd: int, n: int = 4096, size: int = 4
                 ) -> list[tuple[int, int, bytes]]:
    """A read of ``n`` bytes of the vEVENTQ fd, split into (flags, sequence, data)
    records; ``size`` is a normal event's data size (4 for the selftest's, 32 for an
    SMMUv3 event)."""
    raw = t.p.read_fd(fd, n)
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(raw):
        flags, seq = u.VEVENT_HEADER.unpack_from(raw, pos)
        pos += 8
        n = 0 if flags & 1 else size
        out.append((flags, seq, raw[pos:pos + n]))
        pos += n
    return out
