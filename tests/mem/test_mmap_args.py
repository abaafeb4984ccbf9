"""Hostile arguments to mmap, munmap, read, memfd_create and ftruncate: the kernel's errno,
nothing changed, and no host memory in proportion to a length the caller chose."""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine, Process
from iommulab.mem.mm import TASK_SIZE_MAX
from tests.helpers import expect_errno, peak_host_bytes

K, M, G = 1 << 10, 1 << 20, 1 << 30


def _proc(ram: str = "1G") -> tuple[Machine, Process]:
    m = Machine("x86-vtd", ram=ram)
    return m, m.spawn_process()



def _unchanged(m: Machine, p: Process) -> None:
    assert not p.mm.vmas and m.mem.frames.free_frames == m.mem.frames.total_frames


@pytest.mark.parametrize(("length", "backing", "code"), [
    (0, "anon", errno.EINVAL),  # do_mmap: !len
    (-1, "anon", errno.ENOMEM),  # as unsigned long, PAGE_ALIGN wraps to 0
    (-4 * K, "anon", errno.ENOMEM),  # len > TASK_SIZE
    (1 << 64, "anon", errno.ENOMEM),  # no unsigned long holds it
    (TASK_SIZE_MAX + 1, "anon", errno.ENOMEM),
    (-1, "hugetlb-2M", errno.EINVAL),  # ksys_mmap_pgoff's ALIGN(len, 2M) wraps to 0
    (-4 * M, "hugetlb-2M", errno.ENOMEM),
    ("a lot", "anon", errno.EINVAL),
])
def test_mmap_length_is_checked_as_do_mmap_checks_it(length: int | str, backing: str,
                                                      code: int) -> None:
    """A length of 0 is EINVAL; one that wraps when rounded up or does not fit the address
    space is ENOMEM (a negative length is a huge unsigned long), and for hugetlb a length
    its huge-page rounding wraps to 0 is EINVAL; nothing is mapped or allocated."""
    m, p = _proc()
    expect_errno(code, p.mmap, length, backing)
    _unchanged(m, p)


def test_mmap_offset_is_checked_before_the_fd() -> None:
    """x86_64's sys_mmap refuses an offset that is not whole pages (EINVAL) before it
    looks the fd up (EBADF)."""
    m, p = _proc()
    expect_errno(errno.EINVAL, p.mmap, 4 * K, fd=99, offset=0x800)
    expect_errno(errno.EBADF, p.mmap, 4 * K, fd=99)
    iommufd = p.open("/dev/iommu")
    expect_errno(errno.ENODEV, p.mmap, 4 * K, fd=iommufd)  # no f_op->mmap
    _unchanged(m, p)


def test_a_long_mapping_costs_host_memory_by_what_is_faulted_in() -> None:
    """A 32 TiB read-only private mapping (not accounted, so overcommit allows it) costs
    nothing to make; touching pages at both ends, forking, cutting it in three and
    exiting cost host memory in proportion to the pages touched, not to the length."""
    m, p = _proc()
    va = 0
    child: list[Process] = []

    def make() -> None:
        nonlocal va
        va = p.mmap(1 << 45, prot="r")

    assert peak_host_bytes(make) < 64 * K
    far = va + (1 << 45) - 4 * K

    def use() -> None:
        assert p.read(va, 8) == bytes(8) and p.read(far, 8) == bytes(8)
        child.append(p.fork())
        assert child[0].read(far, 8) == bytes(8)
        p.munmap(va + (1 << 44), 4 * K)  # splits it: both sides keep their pages
        assert p.read(far, 8) == bytes(8)
        assert len(p.mm.vmas) == 2 and p.mm.vmas[0].pages.count(0, p.mm.vmas[0].npages) == 1

    assert peak_host_bytes(use) < 1 * M
    p.mm._check()
    child[0].exit()
    p.exit()
    m.mem._check()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames


def test_overcommit_refuses_committed_memory_past_ram() -> None:
    """``__vm_enough_memory`` under OVERCOMMIT_GUESS: a private writable mapping and any
    shared anonymous one (shmem's accounting) may not be longer than RAM (ENOMEM); a
    read-only private one, a shared memfd one and hugetlb (its reservation counts) are
    not accounted."""
    m, p = _proc()
    expect_errno(errno.ENOMEM, p.mmap, 2 * G)
    expect_errno(errno.ENOMEM, p.mmap, 2 * G, prot="r", shared=True)
    mfd = p.memfd_create("big", 2 * G)
    expect_errno(errno.ENOMEM, p.mmap, 2 * G, fd=mfd, private=True)
    _unchanged(m, p)
    p.mmap(2 * G, prot="r")
    p.mmap(2 * G, fd=mfd)
    p.mmap(2 * G, fd=mfd, prot="r", private=True)
    p.mmap(512 * M)
    assert len(p.mm.vmas) == 4 and m.mem.frames.free_frames == m.mem.frames.total_frames
    p.exit()


def test_mmap_goes_into_the_highest_hole_and_runs_out_with_enomem() -> None:
    """``vm_unmapped_area`` top-down: a hole a munmap left is used again, the highest
    place in it first; when no hole fits, ENOMEM (never an address below user space)."""
    from iommulab.mem.mm import MMAP_BASE
    _, p = _proc()
    a = p.mmap(1 * M)
    b = p.mmap(1 * M)
    assert a == MMAP_BASE - M and b == a - M - 4 * K  # a guard page between them
    p.munmap(a, 1 * M)
    assert p.mmap(64 * K) == MMAP_BASE - 64 * K
    big = p.mmap(1 << 46, prot="r")
    assert big > 0
    expect_errno(errno.ENOMEM, p.mmap, 1 << 46, prot="r")
    assert all(v.start > 0 for v in p.mm.vmas) and len(p.mm.vmas) == 3
    p.munmap(big, 1 << 46)
    assert p.mmap(1 << 46, prot="r") == big
    p.exit()


def test_max_map_count_limits_mappings_and_the_cuts_that_add_one() -> None:
    """``do_mmap`` refuses a mapping once ``map_count`` is past vm.max_map_count, and a
    munmap that would split one VMA in three at the limit is ENOMEM, nothing unmapped
    (``vms_gather_munmap_vmas``); a munmap of a whole VMA still works."""
    m, p = _proc()
    p.mm.max_map_count = 8
    vas = [p.mmap(64 * K) for _ in range(9)]  # map_count > 8 is refused: 9 fit
    expect_errno(errno.ENOMEM, p.mmap, 64 * K)
    p.munmap(vas[0], 64 * K)
    p.munmap(vas[1], 4 * K)  # cuts one end: no new VMA
    expect_errno(errno.ENOMEM, p.munmap, vas[2] + 4 * K, 4 * K)
    assert p.mm.find_vma(vas[2] + 4 * K) is not None and len(p.mm.vmas) == 8
    p.exit()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames


@pytest.mark.parametrize(("offset", "length"), [
    (0, 1 << 64), (0, -4 * K), (0, 0), (TASK_SIZE_MAX + 4 * K, 4 * K), (-4 * K, 4 * K),
    (0x800, 4 * K), (0, TASK_SIZE_MAX),
])
def test_munmap_of_a_range_past_user_space_is_einval_and_unmaps_nothing(
        offset: int, length: int) -> None:
    """``do_vmi_munmap``: EINVAL for an unaligned start, a start or an end past TASK_SIZE
    (a negative length is a huge size_t) or a length of 0; nothing is unmapped."""
    _, p = _proc()
    va = p.mmap(1 * M)
    p.write(va, b"kept")
    start = va + offset if offset >= 0 and offset < TASK_SIZE_MAX else offset
    expect_errno(errno.EINVAL, p.munmap, start, length)
    assert p.read(va, 4) == b"kept" and len(p.mm.vmas) == 1
    p.munmap(0x10000, 4 * K)  # nothing mapped there: success, nothing changed
    p.exit()


def test_read_of_a_negative_length_is_einval() -> None:
    _, p = _proc()
    va = p.mmap(4 * K)
    expect_errno(errno.EINVAL, p.read, va, -1)
    expect_errno(errno.EFAULT, p.read, va, 1 << 40)  # runs past the mapping
    p.exit()


def test_memfd_sizes_cost_nothing_and_bad_ones_are_einval() -> None:
    """A memfd may be as long as MAX_LFS_FILESIZE and costs host memory only for the
    pages used; ``ftruncate`` of a negative length (or one past LLONG_MAX, a negative
    loff_t) is EINVAL, as is a hugetlb size that is not whole huge pages and a name
    longer than MFD_NAME_MAX_LEN."""
    m, p = _proc()
    mfd = 0

    def make() -> None:
        nonlocal mfd
        mfd = p.memfd_create("huge", 1 << 60)
        va = p.mmap(1 << 40, fd=mfd, offset=1 << 50)
        p.write(va + (1 << 39), b"one page")

    assert peak_host_bytes(make) < 256 * K
    assert m.mem.frames.total_frames - m.mem.frames.free_frames == 1
    expect_errno(errno.EINVAL, p.ftruncate, mfd, -1)
    expect_errno(errno.EINVAL, p.ftruncate, mfd, 1 << 63)
    expect_errno(errno.EINVAL, p.ftruncate, mfd, "lots")
    expect_errno(errno.EINVAL, p.memfd_create, "h", 3 * M, "2M")
    expect_errno(errno.EINVAL, p.memfd_create, "x" * 250)
    expect_errno(errno.EINVAL, p.memfd_create, "neg", -1)
    expect_errno(errno.EBADF, p.ftruncate, 99, 0)
    p.exit()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames


def test_a_file_mapping_past_the_end_of_the_file() -> None:
    """mmap of a memfd may run past its end; a page there is SIGBUS (EFAULT here) and GUP
    stops before it; growing the file makes it usable, shrinking it makes it SIGBUS
    again, its page freed (``truncate_pagecache``)."""
    m, p = _proc()
    mfd = p.memfd_create("short", 8 * K)
    va = p.mmap(16 * K, fd=mfd)
    p.write(va + 4 * K, b"second")
    expect_errno(errno.EFAULT, p.read, va + 8 * K, 1)
    pins = p.mm.pin_user_pages(va, 4, write=True)
    assert len(pins) == 2
    p.mm.unpin_user_pages(pins)
    p.ftruncate(mfd, 16 * K)
    p.write(va + 12 * K, b"fourth")
    p.ftruncate(mfd, 4 * K)
    expect_errno(errno.EFAULT, p.read, va + 4 * K, 1)
    assert m.mem.frames.total_frames - m.mem.frames.free_frames == 1  # page 0's
    p.exit()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames


def test_mmap_flag_rules_of_files() -> None:
    """MAP_SHARED with MAP_PRIVATE for anonymous memory is EINVAL, as is a hugetlbfs
    offset that is not whole huge pages (``hugetlbfs_file_mmap``); for a file the
    ``backing`` argument is ignored, the file's pages are what they are."""
    m, p = _proc()
    expect_errno(errno.EINVAL, p.mmap, 4 * K, shared=True, private=True)
    hfd = p.memfd_create("h", 4 * M, "2M")
    expect_errno(errno.EINVAL, p.mmap, 2 * M, fd=hfd, offset=4 * K)
    _unchanged(m, p)
    mfd = p.memfd_create("m", 4 * M)
    va = p.mmap(2 * M, "hugetlb-2M", fd=mfd, private=True)
    p.write(va, b"copy")
    child = p.fork()
    assert child.read(va, 4) == b"copy"
    child.exit()
    p.exit()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames
