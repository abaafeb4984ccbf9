"""fork and copy-on-write of private memory, as mm/memory.c, mm/huge_memory.c and
mm/hugetlb.c do them: ``copy_page_range`` shares anonymous pages read-only and copies at
fork only the ones that may be DMA-pinned; ``do_wp_page`` copies on the first write
unless the writer's mapping is the only one left; GUP takes a page of its own before it
pins. After every test no frame, pin or locked page is left."""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine, Process
from iommulab.errors import OutOfMemory

K = 4096
M = 1 << 20
PAGES = {"anon": 1, "thp": 1, "hugetlb-2M": 512}  # what a write to a shared page copies


def used(m: Machine) -> int:
    return m.mem.frames.total_frames - m.mem.frames.free_frames


def pfn(p: Process, va: int) -> int:
    vma = p.mm.find_vma(va)
    assert vma is not None
    return int(vma.pfns()[(va - vma.start) >> 12])


def check(m: Machine, *procs: Process) -> None:
    for p in procs:
        p.mm._check()
    m.mem._check()


def clean(m: Machine) -> None:
    assert used(m) == 0 and m.mem.pins.pins == 0 and m.mem.anon.maps.total == 0
    m.mem._check()


@pytest.mark.parametrize("backing", sorted(PAGES))
def test_fork_shares_private_pages_until_one_side_writes(backing: str) -> None:
    """copy_page_range copies no anonymous page (a THP goes by its PMD, a hugetlb page
    whole); the first write copies the page (4K of a THP, the whole hugetlb page) for
    the writer, the other side keeps the old one; once a side is alone its write
    reuses the page (do_wp_page, do_huge_pmd_wp_page, hugetlb_wp)."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(4 * M, backing, populate=True)
    p.write(va, b"parent")
    p.write(va + 3 * M, b"far")
    before = used(m)
    c = p.fork()
    assert used(m) == before
    assert pfn(c, va) == pfn(p, va) and c.read(va, 6) == b"parent"
    old = pfn(p, va)
    c.write(va + 1, b"C")
    assert used(m) == before + PAGES[backing]
    assert pfn(p, va) == old and pfn(c, va) != old
    assert p.read(va, 6) == b"parent" and c.read(va, 6) == b"pCrent"
    assert pfn(c, va + 3 * M) == pfn(p, va + 3 * M) and c.read(va + 3 * M, 3) == b"far"
    check(m, p, c)
    c.exit()
    assert used(m) == before
    p.write(va, b"P")
    assert used(m) == before and pfn(p, va) == old and p.read(va, 6) == b"Parent"
    check(m, p)
    p.exit()
    clean(m)


def test_fork_of_a_process_larger_than_free_memory_succeeds() -> None:
    """A fork needs no free memory for the private pages it shares (where a copy of
    48M of a 64M machine cannot fit)."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(48 * M, populate=True)
    before = used(m)
    c = p.fork()
    assert used(m) == before
    c.write(va, b"mine")
    assert p.read(va, 4) == bytes(4) and used(m) == before + 1
    c.exit()
    p.exit()
    clean(m)


@pytest.mark.parametrize(("backing", "copied"), [("anon", 2), ("thp", 512),
                                                 ("hugetlb-2M", 512)])
def test_fork_copies_now_for_the_child_the_pages_that_may_be_pinned(backing: str,
                                                                    copied: int) -> None:
    """folio_needs_cow_for_dma: once the parent has pinned (MMF_HAS_PINNED), an exclusive
    page that holds a pin (for a large folio: any page of it) is copied for the child at
    fork (copy_present_page; a THP has the parent's PMD split and each page copied,
    copy_huge_pmd; a hugetlb page is copied whole); the parent keeps the pinned page, so
    DMA keeps reaching the parent and the child never sees it. Unpinned pages are
    shared, also by a later fork once the pins are gone."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(4 * M, backing, populate=True)
    p.write(va + K, b"pinned")
    pinned = p.mm.pin_user_pages(va + K, 2, write=True)
    before = used(m)
    c = p.fork()
    assert used(m) == before + copied
    assert pfn(p, va + K) == int(pinned[0]) != pfn(c, va + K)
    assert c.read(va + K, 6) == b"pinned"
    assert pfn(c, va + 3 * M) == pfn(p, va + 3 * M)  # another folio: shared
    if backing == "thp":  # the parent maps the pinned THP by 4K pages now, the child its copies
        pv, cv = p.mm.find_vma(va), c.mm.find_vma(va)
        assert pv is not None and cv is not None and len(pv.folios) == len(cv.folios) == 1
    m.mem.write(int(pinned[0]) << 12, b"device")  # DMA into the pinned page
    assert p.read(va + K, 6) == b"device" and c.read(va + K, 6) == b"pinned"
    p.write(va + K, b"P")  # exclusive: written in place, still the pinned page
    assert pfn(p, va + K) == int(pinned[0]) and used(m) == before + copied
    check(m, p, c)
    p.mm.unpin_user_pages(pinned)
    c.exit()
    c2 = p.fork()
    assert used(m) == before and pfn(c2, va + K) == pfn(p, va + K)
    check(m, p, c2)
    c2.exit()
    p.exit()
    clean(m)


@pytest.mark.parametrize("write", [False, True])
def test_a_pin_of_a_shared_page_takes_a_page_of_its_own(write: bool) -> None:
    """GUP breaks COW before it pins: a write pin faults for write, a read-only pin
    unshares (gup_must_unshare: a pinned anonymous page must be exclusive), so the pin
    holds a new copy and the child keeps the old page, which is its alone now: its
    write reuses it and never reaches the pinned page."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(4 * K, populate=True)
    p.write(va, b"data")
    c = p.fork()
    shared = pfn(p, va)
    pins = p.mm.pin_user_pages(va, 2, write)
    assert int(pins[0]) == pfn(p, va) != shared and pfn(c, va) == shared
    assert p.mm.gup_fast(va, 4, write) == 2  # the pinned pages need no copy any more
    c.write(va, b"kid!")
    assert pfn(c, va) == shared and m.mem.read(int(pins[0]) << 12, 4) == b"data"
    check(m, p, c)
    p.mm.unpin_user_pages(pins)
    c.exit()
    p.exit()
    clean(m)


@pytest.mark.parametrize(("kernel", "copied"), [("6.12", True), ("7.0", False)])
def test_a_thp_mapped_by_4k_pages_is_reused_only_from_6_15(kernel: str, copied: bool) -> None:
    """A write to a page of a THP the writer maps by 4K PTEs and does not have
    exclusively: 6.12's wp_can_reuse_anon_folio never reuses a page of a large folio (a
    copy); from 6.15 (__wp_can_reuse_large_anon_folio) it does when every reference to
    the folio is a mapping of the writer's mm. (The copy leaves the THP partly mapped:
    the model splits it at once and frees the old page, Linux's deferred split waits
    for memory pressure, so the frames in use match only after it ran.)"""
    m = Machine("x86-vtd", ram="64M", kernel=kernel)
    p = m.spawn_process()
    va = p.mmap(2 * M, "thp", populate=True)
    pins = p.mm.pin_user_pages(va, 1, write=True)
    p.fork().exit()  # a pinned THP: the parent's PMD is split, the child got copies
    p.mm.unpin_user_pages(pins)
    p.fork().exit()  # shared page by page, then the parent is alone again, not exclusive
    vma = p.mm.find_vma(va)
    assert vma is not None and not vma.folios and not vma.excl().any()
    old = pfn(p, va + 5 * K)
    p.write(va + 5 * K, b"x")
    assert (pfn(p, va + 5 * K) != old) == copied
    assert p.mm.anon.compound(vma.pfns()[:1])[0] != copied  # the copy left the THP split
    check(m, p)
    p.exit()
    clean(m)


@pytest.mark.parametrize(("kernel", "copied"), [("6.12", True), ("7.0", False)])
def test_a_pin_of_pte_mapped_thp_after_two_forks(kernel: str, copied: bool) -> None:
    """__wp_can_reuse_large_anon_folio answers for a whole folio: a pin (FOLL_PIN's
    unshare) of PTE-mapped THP the parent is alone with, after two forks, reuses every
    page in 7.0 and copies every page in 6.12, whatever else the mm maps. (Its cost,
    linear in pages in both, is a figure of benchmarks/bench_fork.py.)"""
    size = 8 * M
    m = Machine("x86-vtd", ram=2 * size + 64 * M, kernel=kernel)
    p = m.spawn_process()
    for _ in range(20):
        p.mmap(K)
    va = p.mmap(size, "thp", populate=True)
    pins = p.mm.pin_user_pages(va, size // K, write=True)
    p.fork().exit()
    p.mm.unpin_user_pages(pins)
    p.fork().exit()
    vma = p.mm.find_vma(va)
    assert vma is not None and not vma.folios and not vma.excl().any()
    before = vma.pfns()
    runs = p.mm.pin_user_page_runs(va, size // K, write=True)
    assert int((vma.pfns() != before).sum()) == (size // K if copied else 0)
    check(m, p)
    p.mm.unpin_user_page_runs(runs)
    p.exit()
    clean(m)


def test_munmap_of_a_shared_thp_frees_only_what_no_process_maps() -> None:
    """A page goes with its last mapping: half a THP munmapped by the parent stays for
    the child; when the child exits that half is freed (the THP split) and the rest
    stays the parent's."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(2 * M, "thp", populate=True)
    p.write(va, b"kept")
    before = used(m)
    c = p.fork()
    p.munmap(va + M, M)
    assert used(m) == before and c.read(va + M, 1) == b"\0"
    check(m, p, c)
    c.exit()
    assert used(m) == before - 256 and p.read(va, 4) == b"kept"
    check(m, p)
    p.exit()
    clean(m)


def test_fork_that_cannot_copy_a_pinned_page_fails_and_leaves_nothing() -> None:
    """The copy of a pinned page at fork is an allocation; when it fails (fail-nth,
    every point in turn) fork is ENOMEM, the child's pages and counts are gone and the
    parent is as it was."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    va = p.mmap(8 * K, populate=True)
    other = p.mmap(8 * K, populate=True)
    pins = p.mm.pin_user_pages(va, 2, write=True)
    before = used(m)
    for nth in range(1, 10):
        m.mem.fail_nth.arm(nth)
        try:
            c = p.fork()
        except OutOfMemory as err:
            assert err.errno == errno.ENOMEM and m.mem.fail_nth.triggered
            assert used(m) == before and pfn(p, va) == int(pins[0])
            check(m, p)
            continue
        finally:
            m.mem.fail_nth.disarm()
        break
    assert nth > 1 and pfn(c, other) == pfn(p, other)
    c.exit()
    p.mm.unpin_user_pages(pins)
    p.exit()
    clean(m)


def test_a_hugetlb_page_to_copy_without_a_free_one_is_enomem() -> None:
    """A hugetlb page is copied whole, into a new huge page: at fork for a pinned one
    (copy_hugetlb_page_range), on the first write to a shared one (hugetlb_wp). With no
    free huge page both are ENOMEM naming the address, and nothing changes."""
    m = Machine("x86-vtd", ram="4M")
    p = m.spawn_process()
    va = p.mmap(4 * M, "hugetlb-2M")  # every huge page of the machine
    p.write(va + M, b"data")
    pins = p.mm.pin_user_pages(va, 1, write=True)
    with pytest.raises(OutOfMemory, match=f"fork of a pinned page: .* the one at {va:#x}"):
        p.fork()
    check(m, p)
    p.mm.unpin_user_pages(pins)
    c = p.fork()
    with pytest.raises(OutOfMemory, match=f"copy on write: .* the one at {va:#x}"):
        c.write(va + M, b"kid")
    assert pfn(c, va) == pfn(p, va) and c.read(va + M, 4) == b"data"
    check(m, p, c)
    c.exit()
    p.write(va + M, b"mine")  # alone again: reused, no copy needed
    assert p.read(va + M, 4) == b"mine"
    p.exit()
    clean(m)



@pytest.mark.parametrize("how", ["fail-nth", "out of frames"])
def test_a_failed_fork_tears_the_half_built_child_down(how: str) -> None:
    """``dup_mmap``'s error path: whatever VMA the fork fails at (a fail-nth point in
    turn, or the machine out of frames), the child it had built is torn down: the
    mapcounts it added, its copies and its file references go, and the machine is as it
    was; the parent keeps its pages, pins and files. The parent has every kind of VMA,
    among them a 32 TiB sparse one with pages at both ends and pinned pages to copy."""
    m = Machine("x86-vtd", ram="128M")
    p = m.spawn_process()
    mfd = p.memfd_create("m", M)
    vas = [p.mmap(1 << 45, prot="r"), p.mmap(4 * M, "anon"), p.mmap(4 * M, "thp"),
           p.mmap(4 * M, "hugetlb-2M"), p.mmap(M, shared=True),
           p.mmap(M, fd=mfd, private=True), p.mmap(M, fd=mfd), p.mmap(2 * K)]
    for va in vas[1:]:
        p.write(va, b"x" * 5000)
    p.read(vas[0], 1)
    p.read(vas[0] + (1 << 45) - K, 1)
    pins = [p.mm.pin_user_pages(va, 2, write=True) for va in vas[1:]]
    memfd = p.files[mfd].memfd  # type: ignore[attr-defined]

    def state() -> tuple[int, ...]:
        return (used(m), m.mem.anon.maps.total, m.mem.pins.pins, len(m.mem.anon.folios),
                memfd.refs, p.mm.pinned_pages)

    for step in range(1, 64):
        before = state()
        hog = None
        if how == "fail-nth":
            m.mem.fail_nth.arm(step)
        elif step * 16 < m.mem.frames.free_frames:
            hog = m.mem.alloc_page_runs(m.mem.frames.free_frames - step * 16)
        try:
            child = p.fork()
        except OutOfMemory:
            m.mem.fail_nth.disarm()
            if hog is not None:
                m.mem.free_page_runs(hog)
            assert state() == before, step
            check(m, p)
            continue
        m.mem.fail_nth.disarm()
        if hog is not None:
            m.mem.free_page_runs(hog)
        check(m, p, child)
        child.exit()
        break
    assert step > 1
    for va, pin in zip(vas[1:], pins, strict=True):
        assert pfn(p, va) == int(pin[0])
        p.mm.unpin_user_pages(pin)
    p.exit()
    clean(m)
