"""A process's memory through the CPU: reads and writes across pages and folios."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from iommulab import Machine
from iommulab.errors import BadAddress, InvalidArgument, OutOfMemory
from iommulab.mem import PhysMem
from iommulab.mem.mm import MMAP_BASE, MmStruct, pfn_runs
from iommulab.mem.pins import _BREAKS_CHUNK


def test_pfn_runs() -> None:
    assert pfn_runs(np.array([5, 6, 7, 9, 3, 4], dtype=np.int64)) == [(5, 3), (9, 1), (3, 2)]
    assert pfn_runs(np.empty(0, dtype=np.int64)) == []


@pytest.mark.parametrize("backing", ["anon", "thp"])
def test_unaligned_access_across_pages(backing: str) -> None:
    mm = MmStruct(PhysMem("64M"))
    va = mm.mmap(4 << 20, backing)
    data = bytes(range(256)) * 40  # 10 KiB from 6 bytes before a page end
    mm.write(va + 0xFFA, data)
    assert mm.read(va + 0xFFA, len(data)) == data
    assert mm.read(va + 0xFF9, 1) == b"\0"
    ro = mm.mmap(4096, writable=False)
    with pytest.raises(BadAddress):
        mm.write(ro, b"x")
    mm.close()
    assert mm.mem.frames.allocated_blocks == 0


@pytest.mark.parametrize("backing", ["anon", "thp"])
def test_munmapped_pinned_pages_live_until_their_last_unpin(backing: str) -> None:
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(4 << 20, backing)
    mm.write(va + 0x5000, b"kept")
    pinned = mm.pin_user_pages(va + 0x4000, 3, write=True)
    mm.munmap(va, 4 << 20)
    held = 512 if backing == "thp" else 3  # a pinned THP keeps its whole folio
    assert mem.frames.free_frames == mem.frames.total_frames - held
    assert mem.read(int(pinned[1]) << 12 | 0x000, 4) == b"kept"
    mm.unpin_user_pages(pinned)
    assert mem.frames.free_frames == mem.frames.total_frames
    assert mem.frames.allocated_blocks == 0 and mem.pins.pins == 0


def test_anon_fault_is_one_injection_point_and_takes_nothing_on_failure() -> None:
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(1 << 20)
    mem.fail_nth.arm(1)
    with pytest.raises(OutOfMemory):
        mm.pin_user_pages(va, 256, write=True)
    assert mem.frames.allocated_blocks == 0 and mem.pins.pins == 0
    assert len(mm.pin_user_pages(va, 256, write=True)) == 256


@pytest.mark.parametrize("backing", ["anon", "thp"])
def test_munmap_of_a_middle_part_leaves_two_mappings(backing: str) -> None:
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(8 << 20, backing, populate=True)
    mm.write(va + (1 << 20), b"left")
    mm.write(va + (7 << 20), b"right")
    mm.munmap(va + (3 << 20) + 0x5000, (2 << 20) + 0x1000)  # through two THP folios
    assert [(v.start - va, v.end - va) for v in mm.vmas] == [
        (0, (3 << 20) + 0x5000), ((5 << 20) + 0x6000, 8 << 20)]
    assert mm.read(va + (1 << 20), 4) == b"left" and mm.read(va + (7 << 20), 5) == b"right"
    with pytest.raises(BadAddress):
        mm.read(va + (4 << 20), 1)
    freed = (2 << 20) + 0x1000
    assert mem.frames.free_frames == mem.frames.total_frames - ((8 << 20) - freed) // 4096
    pinned = mm.pin_user_pages(va + (3 << 20), 5, write=True)  # the last 5 pages before the cut
    mm.munmap(va, 8 << 20)
    assert mem.frames.free_frames == mem.frames.total_frames - 5
    mm.unpin_user_pages(pinned)
    assert mem.frames.allocated_blocks == 0 and not mm.vmas
    mem.frames._check()


def test_munmap_may_not_cut_a_hugetlb_page_and_then_changes_nothing() -> None:
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(4 << 20, "hugetlb-2M")
    with pytest.raises(InvalidArgument, match="cuts a hugetlb-2M page"):
        mm.munmap(va + 0x1000, 2 << 20)
    assert len(mm.vmas) == 1 and mem.frames.free_frames == mem.frames.total_frames - 1024
    mm.munmap(va + (2 << 20), 2 << 20)
    assert mm.vmas[0].end == va + (2 << 20)
    assert mem.frames.free_frames == mem.frames.total_frames - 512
    mm.close()
    assert mem.frames.allocated_blocks == 0


def test_munmap_whose_end_cuts_a_hugetlb_page_keeps_its_first_cut() -> None:
    """``vms_gather_munmap_vmas`` splits at the start before it tries the end: when the
    end cuts a huge page (``hugetlb_vm_op_split``: EINVAL), the mapping stays split at
    the start, every page still mapped."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(4 << 20, "hugetlb-2M")
    with pytest.raises(InvalidArgument, match="cuts a hugetlb-2M page"):
        mm.munmap(va + (2 << 20), 1 << 20)
    assert [(v.start, v.end) for v in mm.vmas] == [(va, va + (2 << 20)),
                                                   (va + (2 << 20), va + (4 << 20))]
    assert mem.frames.free_frames == mem.frames.total_frames - 1024
    mm._check()
    mm.close()
    assert mem.frames.allocated_blocks == 0


def test_munmap_of_pages_in_a_pinned_thp_frees_them_on_the_last_unpin() -> None:
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(2 << 20, "thp", populate=True)
    pinned = mm.pin_user_pages(va, 512, write=True)
    mm.munmap(va + (1 << 20), 1 << 20)
    assert mem.frames.free_frames == mem.frames.total_frames - 512  # pinned: not freed
    mm.unpin_user_pages(pinned)
    assert mem.frames.free_frames == mem.frames.total_frames - 256
    mm.close()
    assert mem.frames.allocated_blocks == 0 and mem.pins.pins == 0


def test_map_private_file_copies_on_write() -> None:
    """MAP_PRIVATE of a memfd: reads see the file, the first write copies the page (the
    file and other mappings keep the old bytes); munmap frees only the copies."""
    from iommulab import Machine
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    mfd = p.memfd_create("f", 2 * 4096)
    shared = p.mmap(2 * 4096, fd=mfd)
    p.write(shared, b"file" * 2048)
    private = p.mmap(2 * 4096, fd=mfd, private=True)
    assert p.read(private, 4) == b"file"
    before = m.mem.frames.allocated_blocks
    p.write(private + 4096, b"mine")
    assert m.mem.frames.allocated_blocks == before + 1
    assert p.read(private + 4096, 4) == b"mine" and p.read(shared + 4096, 4) == b"file"
    child = p.fork()
    assert child.read(private + 4096, 4) == b"mine"
    child.write(private + 4096, b"kid!")
    assert p.read(private + 4096, 4) == b"mine"
    child.exit()
    p.munmap(private, 2 * 4096)
    assert m.mem.frames.allocated_blocks == before
    p.exit()


def test_a_thp_stretch_with_4k_pages_keeps_faulting_4k_pages() -> None:
    """A THP fault allocates a folio only for a PMD range with nothing mapped yet (a PMD
    that already has a page table of 4K pages gets another 4K page), so what the 4K
    pages hold is kept."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(2 << 20, "thp")
    mem.fragment(order=9)  # no 2M block: the first fault falls back to a 4K page
    mm.write(va, b"kept")
    mem.release_fragmentation()
    mm.write(va + 0x1000, b"next")
    assert mm.read(va, 4) == b"kept" and mm.read(va + 0x1000, 4) == b"next"
    vma = mm.find_vma(va)
    assert vma is not None and not vma.folios and int((vma.pfns() >= 0).sum()) == 2
    mm.close()
    assert mem.frames.allocated_blocks == 0


def test_private_anonymous_mappings_of_whole_pmds_are_pmd_aligned() -> None:
    """6.12's ``__get_unmapped_area``: a private anonymous mapping whose length is a
    multiple of 2M is 2M-aligned, THP or not (``thp_get_unmapped_area_vmflags`` looks
    for 2M more and aligns up inside that; top-down, an area already aligned gives its
    upper part); other lengths and shared anonymous memory (shmem, huge pages off) go
    where they fall. Addresses worked out by hand from that rule and the model's
    top-down search (a guard page between mappings, the model's own)."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    base, mb, guard = MMAP_BASE, 1 << 20, 0x1000
    assert base % (2 * mb) == 0
    assert mm.mmap(2 * mb) == base - 2 * mb  # the padded area [base - 4M, base) is aligned
    b = mm.mmap(0x2000)
    assert b == base - 2 * mb - guard - 0x2000
    # padded 6M below b starts 16K under a 2M line: aligned up to it
    assert mm.mmap(4 * mb, "thp") == base - 8 * mb
    assert mm.mmap(3 * mb, "thp") == base - 11 * mb - guard  # not whole PMDs: as it falls
    assert mm.mmap(mb) == base - 3 * mb - 4 * guard  # the hole the alignment left
    assert mm.mmap(2 * mb, shared=True) == base - 13 * mb - 2 * guard  # shmem: no alignment
    mm.close()
    assert mem.frames.allocated_blocks == 0


def _split_vma(mm: MmStruct, va: int, at: int) -> None:
    """``split_vma`` at page ``at`` of the VMA at ``va`` (what an mprotect of a part does,
    which the model has no call for): two VMAs, end to end, over the same pages."""
    vma = mm.find_vma(va)
    assert vma is not None and not vma.folios and vma.file is None
    mm._split_vma(vma, at)


def test_pinned_runs_go_on_across_vma_boundaries() -> None:
    """pin_user_page_runs finds runs VMA by VMA; pages that follow each other physically
    across two VMAs end to end are one run, as pfn_runs of pin_user_pages' pfns gives."""
    mm = MmStruct(PhysMem("64M"))
    va = mm.mmap(64 << 12, populate=True)
    vma = mm.find_vma(va)
    assert vma is not None and pfn_runs(vma.pfns()) == [(int(vma.pfns()[0]), 64)]
    _split_vma(mm, va, 24)
    runs = mm.pin_user_page_runs(va, 64, write=True)
    pfns = mm.pin_user_pages(va, 64, write=True)
    assert runs == pfn_runs(pfns) == [(int(pfns[0]), 64)]
    assert len(mm.vmas) == 2 and mm.mem.pins.pins == 128
    mm.unpin_user_page_runs(runs)
    mm.unpin_user_pages(pfns)
    mm._check()
    mm.close()
    assert mm.mem.pins.pins == 0 and mm.mem.frames.allocated_blocks == 0


def test_pfn_runs_across_the_chunks_it_compares_by() -> None:
    """pfn_runs looks for the ends of runs a chunk of pfns at a time; runs that end just
    before, at or after a chunk's edge come out as from one comparison of them all."""
    n = 3 * _BREAKS_CHUNK + 5
    pfns = np.arange(n, dtype=np.int64) + 1000
    for at in (_BREAKS_CHUNK - 1, _BREAKS_CHUNK, _BREAKS_CHUNK + 1, 2 * _BREAKS_CHUNK, n - 1):
        pfns[at:] += 7
    want: list[tuple[int, int]] = []
    for pfn in pfns.tolist():
        if want and want[-1][0] + want[-1][1] == pfn:
            want[-1] = (want[-1][0], want[-1][1] + 1)
        else:
            want.append((pfn, 1))
    assert pfn_runs(pfns) == want and len(want) == 6


def test_pin_user_page_runs_makes_no_array_of_the_pages() -> None:
    """The runs of a pin come from the VMA's own pfns a chunk at a time: pinning 4 GiB
    (1M pages) allocates less than a quarter of an array of its pfns."""
    mm = MmStruct(PhysMem("5G"))
    va = mm.mmap(4 << 30, "hugetlb-1G")
    npages = 1 << 20
    mm.unpin_user_page_runs(mm.pin_user_page_runs(va, npages, write=True))  # count arrays
    tracemalloc.start()
    try:
        runs = mm.pin_user_page_runs(va, npages, write=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    vma = mm.find_vma(va)
    assert vma is not None and runs == pfn_runs(vma.pfns())
    assert peak < npages * 8 // 4, peak
    mm.unpin_user_page_runs(runs)
    mm.close()
    assert mm.mem.pins.pins == 0 and mm.mem.frames.allocated_blocks == 0


def test_get_user_pages_is_a_plain_get() -> None:
    """``get_user_pages_fast(addr, n, 0, pages)`` without FOLL_PIN: the pages are faulted
    in and nothing is pinned, unshared or marked (MMF_HAS_PINNED stays clear), so a page
    fork shared stays shared; the walk stops at a hole or a PFNMAP VMA, and with no page
    at all it is EFAULT."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(4 << 12)
    mm.write(va, b"shared")
    child = mm.fork()
    got = mm.get_user_pages(va, 4)
    assert len(got) == 4 and (got >= 0).all() and mem.pins.pins == 0
    assert not mm.has_pinned
    assert int(got[0]) == int(child.get_user_pages(va, 1)[0])  # not unshared
    mmio = mm.mmap(2 << 12, mmio_pa=0x1000_0000)
    with pytest.raises(BadAddress):
        mm.get_user_pages(mmio, 1)
    mm.munmap(va + (2 << 12), 1 << 12)
    assert mm.get_user_pages(va, 4).tolist() == got[:2].tolist()
    child.close()
    mm.close()
    assert mem.frames.allocated_blocks == 0


@pytest.mark.parametrize("kind", ["shmem", "memfd", "truncated"])
def test_file_pages_unmapped_while_pinned_are_freed_by_the_last_unpin(kind: str) -> None:
    """A shmem or memfd page that no mapping and no file holds any more (munmapped and
    the file closed, or truncated away) while pinned is kept for the pin, and the last
    unpin frees it, whoever pinned it (the pin is the last ``put_page``)."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    if kind == "shmem":
        va = p.mmap(1 << 20, shared=True)
    else:
        mfd = p.memfd_create("m", 1 << 20)
        va = p.mmap(1 << 20, fd=mfd)
    p.write(va, b"pinned" * 2000)
    pins = p.mm.pin_user_pages(va, 3, write=True)
    if kind == "truncated":
        p.ftruncate(mfd, 0)
    else:
        p.munmap(va, 1 << 20)
        if kind == "memfd":
            p.close(mfd)
    frames = m.mem.frames
    assert frames.total_frames - frames.free_frames == 3
    assert m.mem.read(int(pins[0]) << 12, 6) == b"pinned"
    p.mm.unpin_user_pages(pins[:1])
    assert frames.total_frames - frames.free_frames == 2
    p.mm.unpin_user_pages(pins[1:])
    m.mem._check()
    p.exit()
    assert frames.free_frames == frames.total_frames and not m.mem.orphans.total


def test_a_hugetlb_mmap_the_machine_cannot_back_takes_nothing() -> None:
    """The hugetlb reservation (``hugetlb_reserve_pages``) fails before a page is taken:
    an mmap wanting more huge pages than are free is ENOMEM and leaves the machine as
    it was; so does a hugetlbfs file mapping, whose writable mapping past the end would
    have grown the file."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    p.mmap(56 << 20, "hugetlb-2M")
    free = m.mem.frames.free_frames
    with pytest.raises(OutOfMemory, match="hugetlb"):
        p.mmap(16 << 20, "hugetlb-2M")
    mfd = p.memfd_create("h", 2 << 20, "2M")
    with pytest.raises(OutOfMemory):
        p.mmap(16 << 20, fd=mfd)
    assert p.files[mfd].memfd.size == 2 << 20  # type: ignore[attr-defined]
    assert m.mem.frames.free_frames == free and len(p.mm.vmas) == 1
    va = p.mmap(4 << 20, fd=mfd)  # two huge pages: fits, and grows the file
    assert p.files[mfd].memfd.size == 4 << 20  # type: ignore[attr-defined]
    p.write(va + (3 << 20), b"x")
    assert m.mem.frames.free_frames == free - 1024
    p.exit()
    m.mem._check()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames


@pytest.mark.parametrize("backing", ["anon", "thp"])
def test_populate_is_best_effort(backing: str) -> None:
    """MAP_POPULATE faults the mapping in and ignores a failure (``mm_populate``): an
    mmap whose pages the machine cannot all supply still succeeds, holding no page the
    failed populate took; one that fits is populated."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    frames = m.mem.frames
    first = p.mmap(40 << 20, backing, populate=True)
    assert frames.total_frames - frames.free_frames == 10240
    va = p.mmap(40 << 20, backing, populate=True)  # does not fit: left unpopulated
    assert frames.total_frames - frames.free_frames == 10240
    p.munmap(first, 40 << 20)
    p.write(va, b"later")  # it faults as it is used
    p.exit()
    m.mem._check()
    assert frames.free_frames == frames.total_frames


def test_a_thp_folio_that_cannot_be_had_falls_back_to_a_4k_page() -> None:
    """``do_huge_pmd_anonymous_page`` answers VM_FAULT_FALLBACK when its folio cannot be
    allocated: the fault is served by one 4K page, and the write succeeds."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    va = mm.mmap(2 << 20, "thp")
    mem.fail_nth.arm(1)
    mm.write(va, b"4K")
    mem.fail_nth.disarm()
    assert mem.fail_nth.fired == "vma_alloc_folio(THP)"
    vma = mm.find_vma(va)
    assert vma is not None and not vma.folios and int((vma.pfns() >= 0).sum()) == 1
    assert mm.read(va, 2) == b"4K"
    mm.close()
    assert mem.frames.allocated_blocks == 0


@pytest.mark.parametrize(("shared", "sites"), [
    (False, ["vm_area_alloc"]),
    (True, ["vm_area_alloc", "alloc_inode_sb(shmem_inode_cachep)",
            "d_alloc_pseudo(alloc_file_pseudo)", "alloc_empty_file(alloc_file_pseudo)"]),
])
def test_each_allocation_of_mmap_fails_it_with_enomem_and_no_mapping(
        shared: bool, sites: list[str]) -> None:
    """``mmap_region``'s ``vm_area_alloc`` and, for shared anonymous memory,
    ``shmem_zero_setup``'s inode, dentry and file: each failed is ENOMEM with nothing
    mapped."""
    mem = PhysMem("64M")
    mm = MmStruct(mem)
    mem.fail_nth.log = []
    mm.munmap(mm.mmap(1 << 20, shared=shared), 1 << 20)
    assert mem.fail_nth.log == sites
    mem.fail_nth.log = None
    for n in range(1, len(sites) + 1):
        mem.fail_nth.arm(n)
        with pytest.raises(OutOfMemory):
            mm.mmap(1 << 20, shared=shared)
        assert not mm.vmas
    mem.fail_nth.disarm()
