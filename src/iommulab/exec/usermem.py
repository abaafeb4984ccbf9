"""A real program's memory as the model's user memory (lab: ``iommulab exec``).

:class:`TargetMm` is the model ``mm`` of a program running under the bridge. It plays
two parts, as the kernel's ``mm_struct`` does for the kernel's two ways into user memory:

* **uaccess** (``copy_from_user``/``copy_to_user``: the model's ``mm.read``,
  ``mm.write``, ``mm.copy_to_user``) goes straight to the program with
  ``process_vm_readv``/``writev``, which fault where the CPU would (a write to a
  read-only page, an unmapped page: EFAULT, what fits before it written);
* **GUP** (``pin_user_pages``, ``get_user_pages``, ``follow_pfn``) runs on a *mirror*:
  model VMAs made from ``/proc/PID/smaps`` (anonymous, THP-eligible, hugetlb 2M/1G,
  MAP_SHARED files and shmem as one model file per real inode, read-only, holes), read
  again on the first GUP after each trapped call, so the model faults, pins, accounts
  and maps the program's pages by its own rules. The model frames it pins are
  registered in :class:`~iommulab.mem.external.ExternalFrames` with the virtual address
  they mirror: their bytes are the program's (``/proc/PID/mem``, which, as a device,
  ignores the CPU's page protections), so DMA and the selftest's access reads and
  writes move real bytes.

See ``docs/design/exec-bridge.md``, "The model side", for the choice and its limits.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..bridge.memory import TargetMemory
from ..errors import BadAddress, InvalidArgument
from ..kernel import KernelVersion
from ..mem.external import ExternalFrames
from ..mem.memfd import MemFd
from ..mem.mm import TASK_SIZE_MAX, MmStruct, pfn_runs
from ..mem.physmem import PhysMem
from .procmaps import RealVma, read_maps, read_smaps

if TYPE_CHECKING:
    from ..mem.mm import I64Array
    from ..mem.vma import Vma

__all__ = ["SharedFiles", "TargetMm"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_HUGE = {2 << 20: "2M", 1 << 30: "1G"}
#: mappings GUP cannot pin (VM_IO/VM_PFNMAP special mappings): left as holes
_SPECIAL = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
#: the mirror's own signature of a mapping: hugetlb page size, writable, the model file
#: (None: private memory) and, for a file, its page offset minus the start page
Sig = tuple[int, bool, int, int]


class SharedFiles:
    """The model file of each real inode mapped MAP_SHARED (shmem, memfd, tmpfs, SysV
    shm), shared by every process of the run so both sides of a fork map one page cache.
    Holds one reference to each until :meth:`close`. ``mms`` are the live mirrors of the
    run: where a file's pinned pages can still be read once the process that pinned
    them has gone. ``bars`` are the backing inodes that hold a device BAR's bytes
    (:mod:`.barmap`): (major, minor, inode) -> the BAR's physical address."""

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        self.files: dict[tuple[int, int, int], MemFd] = {}
        self.mms: list[TargetMm] = []
        self.bars: dict[tuple[int, int, int], int] = {}

    def bar_of(self, vma: RealVma) -> int | None:
        """The physical address that ``vma``'s first page maps when it is a device BAR
        (None for any other mapping)."""
        pa = self.bars.get((*vma.dev, vma.inode)) if vma.inode else None
        return None if pa is None else pa + vma.offset

    def get(self, vma: RealVma) -> MemFd:
        """The model file of ``vma``'s inode, grown to cover what ``vma`` maps."""
        key = (*vma.dev, vma.inode)
        f = self.files.get(key)
        if f is None:
            name = (vma.path or "shmem").rsplit("/", 1)[-1][:200]
            f = self.files[key] = MemFd(self.mem, name, 0, _HUGE.get(vma.page_size))
        need = vma.offset + vma.end - vma.start
        need = -(-need // f.folio_bytes) * f.folio_bytes
        if need > f.size:
            f.ftruncate(need)
        return f

    def close(self) -> None:
        for f in self.files.values():
            f.put()
        self.files.clear()


class TargetMm(MmStruct):
    """The ``mm`` of real process ``pid``: uaccess to its memory, GUP on a mirror."""

    def __init__(self, mem: PhysMem, kernel: KernelVersion, pid: int,
                 shared: SharedFiles, *, skip_prefix: str = "") -> None:
        super().__init__(mem, kernel)
        # the mirror adopts the program's present pages before a GUP faults any: no
        # faulting ahead of the GUP that adopts them
        self.fast_faults = False
        self.pid = pid
        self.shared = shared
        self.skip_prefix = skip_prefix  # the bridge's own backing files: not memory
        self.stale = True
        self.syncs = 0
        self._maps = b""  # the maps text the mirror was last brought in line with
        self._uaccess = TargetMemory(pid)
        self._memfd = -1
        self._pagemap_fd = -1
        self.adopted = 0  # pages taken over from the program's page tables (lab statistic)
        if mem.external is None:
            mem.external = ExternalFrames()
        self.external = mem.external
        shared.mms.append(self)

    # -- uaccess -----------------------------------------------------------------------------------
    def read(self, addr: int, n: int) -> bytes:
        """``copy_from_user``: the program's bytes (EFAULT at a fault)."""
        if n < 0:
            raise InvalidArgument(f"read of {n} bytes at {addr:#x}")
        return self._uaccess.read(addr, n)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """``copy_to_user`` that must all land (EFAULT at a fault, what fits written)."""
        self._uaccess.write(addr, bytes(data))

    def copy_to_user(self, addr: int, data: bytes) -> int:
        """``copy_to_user``: the bytes left uncopied."""
        try:
            self._uaccess.write(addr, data)
        except BadAddress:
            # process_vm_writev stops at the first page it cannot write: find how far
            # it got by writing page by page (rare: only a faulting copy gets here)
            done = 0
            while done < len(data):
                step = min(len(data) - done, PAGE_SIZE - (addr + done) % PAGE_SIZE)
                try:
                    self._uaccess.write(addr + done, data[done:done + step])
                except BadAddress:
                    break
                done += step
            return len(data) - done
        return 0

    def clflush(self, addr: int, n: int) -> None:
        """The program's caches are the real CPU's: nothing to model."""

    # -- the bytes of pinned frames (FrameOwner) ---------------------------------------------------
    def _mem_fd(self) -> int:
        if self._memfd < 0:
            self._memfd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        return self._memfd

    def frame_read(self, va: int, n: int) -> bytes:
        """A device's read of the program's page at ``va``; zeros once it is gone."""
        try:
            data = os.pread(self._mem_fd(), n, va)
        except OSError:
            data = b""
        return data.ljust(n, b"\0")

    def frame_write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        """A device's write to the program's page at ``va`` (lost once it is gone)."""
        with contextlib.suppress(OSError):
            os.pwrite(self._mem_fd(), data, va)

    # -- the mirror --------------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the mirror in line with the program's mappings now: mirror VMAs no real
        mapping with the same signature covers are unmapped (their pinned pages stay
        pinned, as the kernel keeps a page that was unmapped while pinned); real mappings
        not yet mirrored are mapped. A mapping that only grew (the heap) keeps the
        mirror's pages, and one whose protection changed (``mprotect``) keeps its pages
        with the new writability, as the kernel's VMA keeps its pages. O(mappings).
        When ``maps`` reads as it did at the last sync nothing has changed that the
        mirror follows (what ``smaps`` adds, the page size and THP eligibility, is read
        only for new mappings), so ``smaps`` is not read: most calls of a program that
        stopped mapping cost one small read. ``maps`` is read before ``smaps``, so the
        text kept is never newer than the mirror."""
        self.stale = False
        try:
            maps = read_maps(self.pid)
            if maps == self._maps:
                return
            real = [v for v in read_smaps(self.pid) if self._mirrorable(v)]
        except OSError:
            return  # the process is gone: its exit tears the mirror down
        self._maps = maps
        self.syncs += 1
        with self.mem.fail_nth.paused():
            wanted = [(v, self._sig(v)) for v in real]  # may make a model file
        starts = [v.start for v, _ in wanted]
        drop: list[tuple[int, int]] = []
        retag: list[tuple[int, int, bool]] = []  # (lo, hi, writable) of kept pages
        for m in list(self.vmas):
            sig = self._vma_sig(m)
            pos = m.start
            i = max(0, bisect.bisect_right(starts, m.start) - 1)
            while pos < m.end:
                if i < len(wanted) and wanted[i][0].end <= pos:
                    i += 1
                    continue
                if i >= len(wanted) or wanted[i][0].start >= m.end:
                    drop.append((pos, m.end))
                    break
                v, s = wanted[i]
                if v.start > pos:
                    drop.append((pos, min(v.start, m.end)))
                    pos = min(v.start, m.end)
                    continue
                stop = min(v.end, m.end)
                if (s[0], s[2], s[3]) != (sig[0], sig[2], sig[3]):
                    drop.append((pos, stop))
                elif s[1] != sig[1]:
                    retag.append((pos, stop, s[1]))
                pos = stop
                i += 1
        with self.mem.fail_nth.paused():  # the mirror's upkeep is no kernel allocation
            for lo, hi in _merge(drop):
                self._unmap_mirror(lo, hi)
            for lo, hi, writable in retag:
                self._protect_mirror(lo, hi, writable)
            for v, _ in wanted:
                for lo, hi in self._uncovered(v.start, v.end):
                    self._map_mirror(v, lo, hi)

    def _mirrorable(self, v: RealVma) -> bool:
        """A mapping GUP would see: not the bridge's own backing files, except those
        that hold a device BAR (vfio-pci's VM_PFNMAP mapping, which ``follow_pfn``
        reads: VFIO type1 maps it for peer-to-peer DMA)."""
        return (v.readable and v.end <= TASK_SIZE_MAX and v.path not in _SPECIAL
                and not (self.skip_prefix and v.path.startswith(self.skip_prefix)
                         and self.shared.bar_of(v) is None))

    def _sig(self, v: RealVma) -> Sig:
        bar = self.shared.bar_of(v)
        if bar is not None:
            return (0, v.writable, -1, (bar >> PAGE_SHIFT) - (v.start >> PAGE_SHIFT))
        if v.shared:
            f = self.shared.get(v)
            return (f.order, v.writable, id(f), (v.offset >> PAGE_SHIFT) - (v.start >> PAGE_SHIFT))
        order = {2 << 20: 9, 1 << 30: 18}.get(v.page_size, 0)
        return (order, v.writable, 0, 0)

    @staticmethod
    def _vma_sig(m: Vma) -> Sig:
        if m.pfnmap:
            return (0, m.writable, -1, m.mmio_pfn - (m.start >> PAGE_SHIFT))
        if m.file is not None and not m.private:
            return (m.file.order, m.writable, id(m.file), m.pgoff - (m.start >> PAGE_SHIFT))
        return (m.order if m.backing.startswith("hugetlb") else 0, m.writable, 0, 0)

    def _uncovered(self, lo: int, hi: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pos = lo
        for m in self._overlapping(lo, hi):
            if m.start > pos:
                out.append((pos, m.start))
            pos = max(pos, m.end)
        if pos < hi:
            out.append((pos, hi))
        return out

    def _map_mirror(self, v: RealVma, lo: int, hi: int) -> None:
        """A mirror VMA for ``[lo, hi)`` of the real mapping ``v``: a device BAR's is a
        VM_PFNMAP mapping of its pages, as ``vfio_pci_core_mmap`` makes."""
        bar = self.shared.bar_of(v)
        if bar is not None:
            pa = bar + lo - v.start
            self._mmap_region(lo, hi - lo, "anon", v.writable, False, lambda n: pa, None, 0,
                              False, False)
            return
        if v.shared:
            f = self.shared.get(v)
            self._mmap_region(lo, hi - lo, "anon", v.writable, False, None, f,
                              v.offset + lo - v.start, False, False)
            return
        backing = "anon"
        if v.page_size in _HUGE:
            backing = "hugetlb-" + _HUGE[v.page_size]
        elif v.thp_eligible:
            backing = "thp"
        self._mmap_region(lo, hi - lo, backing, v.writable, False, None, None, 0, False, False)

    def _protect_mirror(self, lo: int, hi: int, writable: bool) -> None:
        """``mprotect`` of ``[lo, hi)`` in the mirror: the VMAs there are cut at its ends
        (``__split_vma``) and take the new writability; their pages stay."""
        for m in self._overlapping(lo, hi):
            if m.writable == writable:
                continue
            if m.start < lo:
                m = self._split_vma(m, (lo - m.start) >> PAGE_SHIFT)[1]
            if m.end > hi:
                m = self._split_vma(m, (hi - m.start) >> PAGE_SHIFT)[0]
            m.writable = writable

    def _unmap_mirror(self, lo: int, hi: int) -> None:
        self.external.drop_owner(self, lo, hi)
        try:
            self.munmap(lo, hi - lo)
        except InvalidArgument:  # a cut through a hugetlb page: the whole VMAs go
            for m in self._overlapping(lo, hi):
                self.external.drop_owner(self, m.start, m.end)
                self.munmap(m.start, m.end - m.start)

    def _fresh(self) -> None:
        if self.stale:
            self.sync()

    # -- pages the program already has -------------------------------------------------------------
    def _pagemap(self, addr: int, npages: int) -> npt.NDArray[np.uint64] | None:
        """``/proc/PID/pagemap`` of ``npages`` pages from ``addr`` (None once it is gone)."""
        if self._pagemap_fd < 0:
            try:
                self._pagemap_fd = os.open(f"/proc/{self.pid}/pagemap",
                                           os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            raw = os.pread(self._pagemap_fd, 8 * npages, (addr >> PAGE_SHIFT) * 8)
        except OSError:
            return None
        return np.frombuffer(raw[:len(raw) & ~7], dtype=np.uint64)

    def adopt(self, addr: int, npages: int) -> int:
        """Make the pages of ``[addr, addr + npages pages)`` that the program has present
        (``/proc/PID/pagemap``: PM_PRESENT) present in the mirror too, before a GUP
        looks at them, with no fail-nth point: the kernel's GUP finds such a page in the
        page table and allocates nothing. A shared mapping takes every present page (its
        page cache holds it); a private one only its own anonymous pages (not
        PM_FILE, PM_MMAP_EXCLUSIVE): a page still the file's, or shared with another
        process since a fork, is copied by a write pin in the kernel, so the mirror
        leaves it to its own fault. Returns how many pages were adopted."""
        if npages <= 0:
            return 0
        lo = addr & ~(PAGE_SIZE - 1)
        hi = min(lo + (npages << PAGE_SHIFT), TASK_SIZE_MAX)
        vmas = self._overlapping(lo, hi)
        if not vmas:
            return 0
        first_va = max(lo, vmas[0].start)
        last_va = min(hi, vmas[-1].end)
        entries = self._pagemap(first_va, (last_va - first_va) >> PAGE_SHIFT)
        if entries is None:
            return 0
        adopted = 0
        with self.mem.fail_nth.paused():
            for vma in vmas:
                if vma.pfnmap:
                    continue
                a, b = max(first_va, vma.start), min(last_va, vma.end)
                e = entries[(a - first_va) >> PAGE_SHIFT:(b - first_va) >> PAGE_SHIFT]
                want = (e >> np.uint64(63)) & np.uint64(1) != 0
                if not vma.shared:
                    want &= ((e >> np.uint64(61)) & np.uint64(1) == 0) & \
                        ((e >> np.uint64(56)) & np.uint64(1) != 0)
                first = (a - vma.start) >> PAGE_SHIFT
                n = min(len(want), vma.file_end - first)
                if n <= 0:
                    continue
                want = want[:n] & (vma.pfns(first, first + n) < 0)
                for run_lo, run_n in _true_runs(want):
                    self._fault(vma, first + run_lo, run_n)
                    adopted += run_n
        self.adopted += adopted
        return adopted

    # -- GUP on the mirror, pinned frames registered -----------------------------------------------
    def _register(self, addr: int, runs: list[tuple[int, int]]) -> None:
        va = addr
        for pfn, n in runs:
            self.external.add(pfn, n, self, va)
            va += n << PAGE_SHIFT

    def pin_user_pages(self, addr: int, npages: int, write: bool) -> I64Array:
        self._fresh()
        self.adopt(addr, npages)
        pfns = super().pin_user_pages(addr, npages, write)
        self._register(addr, pfn_runs(pfns))
        return pfns

    def pin_user_page_runs(self, addr: int, npages: int, write: bool) -> list[tuple[int, int]]:
        self._fresh()
        self.adopt(addr, npages)
        runs = super().pin_user_page_runs(addr, npages, write)
        self._register(addr, runs)
        return runs

    def get_user_pages(self, addr: int, npages: int) -> I64Array:
        self._fresh()
        self.adopt(addr, npages)
        pfns = super().get_user_pages(addr, npages)
        if len(pfns):
            self._register(addr, pfn_runs(np.asarray(pfns, dtype=np.int64)))
        return pfns

    def gup_fast(self, addr: int, npages: int, write: bool) -> int:
        self._fresh()
        self.adopt(addr, npages)
        return super().gup_fast(addr, npages, write)

    def find_vma(self, addr: int) -> Vma | None:
        """The mirror's VMA at ``addr`` (what the model asks before a GUP of its own, e.g.
        whether a bitmap's pages can be pinned), the mirror brought up to date first."""
        self._fresh()
        return super().find_vma(addr)

    def follow_pfn(self, addr: int, write: bool) -> tuple[int, int] | None:
        self._fresh()
        return super().follow_pfn(addr, write)

    def _hand_over_shared(self) -> None:
        """Pinned pages of a MAP_SHARED file outlive the exit (they are the file's page
        cache, ``exit_mmap`` only drops this mm's references): their bytes are read and
        written from then on through another live process of the run that maps the same
        page of the same file (e.g. the parent of a child that pinned a shared buffer
        and exited: the selftest's ``fork_gone``). Pages nobody else maps keep their
        pins, not their bytes. O(runs x mappings)."""
        others = [mm for mm in self.shared.mms if mm is not self]
        if not others:
            return
        for pfn, n, va in self.external.runs_of(self):
            for m in self._overlapping(va, va + (n << PAGE_SHIFT)):
                if m.file is None or m.private:
                    continue
                lo, hi = max(va, m.start), min(va + (n << PAGE_SHIFT), m.end)
                self._hand_over(others, m.file, pfn + ((lo - va) >> PAGE_SHIFT),
                                m.pgoff + ((lo - m.start) >> PAGE_SHIFT),
                                (hi - lo) >> PAGE_SHIFT)

    def _hand_over(self, others: list[TargetMm], f: MemFd, pfn: int, pgoff: int,
                   n: int) -> None:
        """Frames ``[pfn, pfn + n)`` (pages ``pgoff``... of ``f``) to the first of
        ``others`` mapping those pages (their mirrors brought up to date first)."""
        for mm in others:
            mm._fresh()
            for m in mm.vmas:
                if m.file is not f or m.private:
                    continue
                lo = max(pgoff, m.pgoff)
                hi = min(pgoff + n, m.pgoff + m.npages)
                if lo < hi:
                    self.external.add(pfn + lo - pgoff, hi - lo, mm,
                                      m.start + ((lo - m.pgoff) << PAGE_SHIFT))

    def close(self) -> None:
        """``exit_mmap``: the mirror goes; pinned frames keep their pins, and their bytes
        too where another process maps them (:meth:`_hand_over_shared`)."""
        with contextlib.suppress(ValueError):
            self.shared.mms.remove(self)
        with self.mem.fail_nth.paused():  # the mirror's upkeep is no kernel allocation
            self._hand_over_shared()
        self.external.drop_owner(self)
        super().close()
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1
        if self._pagemap_fd >= 0:
            os.close(self._pagemap_fd)
            self._pagemap_fd = -1


def _true_runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, length) of each run of True in ``mask``."""
    if not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
