"""Frames whose bytes live outside the model: a real program's pages (lab).

Under ``iommulab exec`` the model's mirror of a program's address space faults and pins
model frames for the program's pages (:mod:`iommulab.exec.usermem`). The frames are the
model's view of those pages (pins, IOPTEs, accounting); their *bytes* are the program's.
:class:`ExternalFrames` routes :class:`~iommulab.mem.physmem.PhysMem` reads and writes of
such frames to an owner that reads and writes the program's memory at the virtual
address the frame is mapped at, so device DMA and the selftest's access reads and
writes move real bytes. The table is kept in runs of frames contiguous in both pfn and
virtual address, found by bisection: no per-page entry.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Protocol

__all__ = ["ExternalFrames", "FrameOwner"]

PAGE_SHIFT = 12


class FrameOwner(Protocol):
    """Where external frames' bytes are: a program's memory, by virtual address."""

    def frame_read(self, va: int, n: int) -> bytes:
        """``n`` bytes at ``va`` as a device reads them (page protections ignored)."""

    def frame_write(self, va: int, data: bytes | bytearray | memoryview) -> None:
        """``data`` at ``va`` as a device writes it (page protections ignored)."""


class ExternalFrames:
    """pfn runs -> (owner, virtual address of the run's first page)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: list[tuple[int, int, FrameOwner, int]] = []  # pfn, count, owner, va

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, pfn: int, count: int, owner: FrameOwner, va: int) -> None:
        """Frames ``[pfn, pfn + count)`` are ``owner``'s pages from ``va`` on (replacing
        what was said of any of them before). O(runs)."""
        if count <= 0:
            return
        self.drop(pfn, count)
        i = bisect.bisect(self._starts, pfn)
        prev = self._runs[i - 1] if i else None
        if prev is not None and prev[2] is owner and prev[0] + prev[1] == pfn and \
                prev[3] + (prev[1] << PAGE_SHIFT) == va:  # extends the run before it
            self._runs[i - 1] = (prev[0], prev[1] + count, owner, prev[3])
            return
        self._starts.insert(i, pfn)
        self._runs.insert(i, (pfn, count, owner, va))

    def drop(self, pfn: int, count: int) -> None:
        """Forget frames ``[pfn, pfn + count)``: their bytes are the model's again."""
        end = pfn + count
        i = max(0, bisect.bisect(self._starts, pfn) - 1)
        keep: list[tuple[int, int, FrameOwner, int]] = []
        j = i
        while j < len(self._runs) and self._runs[j][0] < end:
            p, n, owner, va = self._runs[j]
            if p + n > pfn:
                if p < pfn:
                    keep.append((p, pfn - p, owner, va))
                if p + n > end:
                    keep.append((end, p + n - end, owner, va + ((end - p) << PAGE_SHIFT)))
            else:
                keep.append(self._runs[j])
            j += 1
        self._runs[i:j] = keep
        self._starts[i:j] = [r[0] for r in keep]

    def drop_owner(self, owner: FrameOwner, lo: int = 0, hi: int = 1 << 64) -> None:
        """Forget ``owner``'s frames mapped at virtual addresses in ``[lo, hi)``. O(runs)."""
        for p, n, _, va in [r for r in self._runs if r[2] is owner]:
            a, b = max(lo, va), min(hi, va + (n << PAGE_SHIFT))
            if a < b:
                self.drop(p + ((a - va) >> PAGE_SHIFT), (b - a) >> PAGE_SHIFT)

    def runs_of(self, owner: FrameOwner) -> list[tuple[int, int, int]]:
        """``owner``'s runs as (first pfn, count, virtual address). O(runs)."""
        return [(p, n, va) for p, n, o, va in self._runs if o is owner]

    def owners(self) -> set[int]:
        """ids of the owners with frames here (lab checks)."""
        return {id(r[2]) for r in self._runs}

    def _segments(self, pa: int, n: int) -> list[tuple[int, int, FrameOwner | None, int]]:
        """``[pa, pa + n)`` cut where ownership changes: (pa, length, owner or None, va)."""
        out: list[tuple[int, int, FrameOwner | None, int]] = []
        pos, end = pa, pa + n
        while pos < end:
            pfn = pos >> PAGE_SHIFT
            i = bisect.bisect(self._starts, pfn) - 1
            if i >= 0 and pfn < self._runs[i][0] + self._runs[i][1]:
                p, cnt, owner, va = self._runs[i]
                stop = min(end, (p + cnt) << PAGE_SHIFT)
                out.append((pos, stop - pos, owner, va + pos - (p << PAGE_SHIFT)))
            else:
                nxt = self._starts[i + 1] << PAGE_SHIFT if i + 1 < len(self._starts) else end
                stop = min(end, max(nxt, pos + 1))
                out.append((pos, stop - pos, None, 0))
            pos = stop
        return out

    def read(self, pa: int, n: int, own: Callable[[int, int], bytes]) -> bytes:
        """``n`` bytes at ``pa``: the owners' where frames are external, ``own`` elsewhere."""
        parts = [owner.frame_read(va, k) if owner is not None else own(p, k)
                 for p, k, owner, va in self._segments(pa, n)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, pa: int, data: bytes | bytearray | memoryview,
              own: Callable[[int, memoryview], None]) -> None:
        """``data`` at ``pa``: to the owners where frames are external, ``own`` elsewhere."""
        view = memoryview(data).cast("B")
        done = 0
        for p, k, owner, va in self._segments(pa, len(view)):
            if owner is not None:
                owner.frame_write(va, view[done:done + k])
            else:
                own(p, view[done:done + k])
            done += k
