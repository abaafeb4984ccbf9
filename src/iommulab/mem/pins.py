"""Per-frame counts kept by memory section, as arrays: pins, and the mappings of anonymous
pages.

Linux keeps a pin count in each ``struct page`` (``GUP_PIN_COUNTING_BIAS``) and a
mapcount (``page->_mapcount``); the model keeps one ``int32`` per frame in an array
per memory section (128 MiB, x86_64's ``SECTION_SIZE_BITS = 27``), created when a
frame of the section is first counted, or one number for a section whose frames all
have the same count. A range is a slice update per section; a set
of scattered frames is one fancy-indexed update per stretch of the set that stays in
one section (O(n) numpy work, a Python step per section change).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["SECTION_FRAMES", "FrameCounts", "PinCounts", "pfn_runs"]

SECTION_SHIFT = 27 - 12
SECTION_FRAMES = 1 << SECTION_SHIFT
I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]


#: pfns compared per step when looking for the ends of runs: small temporaries, in cache
_BREAKS_CHUNK = 1 << 16


def pfn_runs(pfns: I64Array) -> list[tuple[int, int]]:
    """``(first pfn, count)`` of each run of consecutive pfns, in order. O(n) numpy work
    with no temporary larger than ``_BREAKS_CHUNK`` entries, and a Python step per run."""
    return _runs_at(pfns, _breaks(pfns))


def _breaks(pfns: I64Array) -> I64Array:
    """The indices ``i`` where ``pfns[i + 1]`` is not ``pfns[i] + 1``, a chunk at a time."""
    parts = []
    for lo in range(0, len(pfns) - 1, _BREAKS_CHUNK):
        seg = pfns[lo:lo + _BREAKS_CHUNK + 1]
        parts.append(np.flatnonzero(seg[1:] != seg[:-1] + 1) + lo)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _runs_at(pfns: I64Array, brk: I64Array) -> list[tuple[int, int]]:
    """The runs of ``pfns``, which break after each index of ``brk``."""
    if not len(pfns):
        return []
    if not len(brk):  # one run: the common case of a batch
        return [(int(pfns[0]), len(pfns))]
    bounds = [0, *(brk + 1).tolist(), len(pfns)]
    firsts = pfns[bounds[:-1]].tolist()
    return [(pfn, b - a) for pfn, a, b in zip(firsts, bounds[:-1], bounds[1:], strict=True)]


class FrameCounts:
    """A non-negative count per pfn; ``nonzero_frames`` and ``total`` are kept up to date.
    Every mutation is checked first (a count may not go below zero), then applied.

    A section whose frames all have the same non-zero count is kept as that one value
    (``_uniform``), so a TiB pinned or mapped by whole sections costs a few bytes per
    section instead of 4 per frame; it becomes an array again (:meth:`_section`) when a
    part of it changes, and an array whose counts are all equal again is folded back
    (:meth:`_compress`) after an update that reaches one of the section's ends (so a
    section filled piece by piece from one end folds once its last piece is in)."""

    def __init__(self) -> None:
        self._sections: dict[int, I32Array] = {}
        self._uniform: dict[int, int] = {}  # section -> the count of each of its frames
        self.nonzero_frames = 0  # frames with a non-zero count
        self.total = 0  # sum of all counts

    # -- ranges ---------------------------------------------------------------------------------
    def _spans(self, pfn: int, count: int) -> list[tuple[int, int, int]]:
        lo = pfn & (SECTION_FRAMES - 1)
        if lo + count <= SECTION_FRAMES:  # most runs: inside one section
            return [(pfn >> SECTION_SHIFT, lo, lo + count)]
        spans = []
        end = pfn + count
        while pfn < end:
            sec = pfn >> SECTION_SHIFT
            lo = pfn & (SECTION_FRAMES - 1)
            hi = min(SECTION_FRAMES, lo + (end - pfn))
            spans.append((sec, lo, hi))
            pfn += hi - lo
        return spans

    def _section(self, sec: int) -> I32Array:
        """The section's array, made (zeros, or the uniform count) if need be."""
        arr = self._sections.get(sec)
        if arr is None:
            value = self._uniform.pop(sec, 0)
            arr = self._sections[sec] = np.full(SECTION_FRAMES, value, dtype=np.int32)
        return arr

    def _compress(self, sec: int) -> None:
        """Keep the section as one value if all its counts are equal (dropped if 0)."""
        arr = self._sections[sec]
        first = int(arr[0])
        if arr[-1] == first and arr.min() == first and arr.max() == first:
            del self._sections[sec]
            if first:
                self._uniform[sec] = first

    def _low(self, sec: int, lo: int, hi: int, need: int) -> bool:
        """Whether some count of ``[lo, hi)`` of the section is below ``need``."""
        arr = self._sections.get(sec)
        if arr is not None:
            return bool((arr[lo:hi] < need).any())
        return self._uniform.get(sec, 0) < need

    def add_range(self, pfn: int, count: int, delta: int) -> None:
        """Add ``delta`` to the count of each of ``count`` frames from ``pfn``."""
        self.add_runs([(pfn, count)], delta, zeros=False)

    def add_runs(self, runs: list[tuple[int, int]], delta: int, *,
                 zeros: bool = True) -> I64Array:
        """Add ``delta`` over each ``(pfn, count)`` run; with ``zeros``, the frames a
        negative ``delta`` took to 0."""
        spans = self._spans(*runs[0]) if len(runs) == 1 else \
            [span for pfn, count in runs for span in self._spans(pfn, count)]
        if delta < 0:
            for sec, lo, hi in spans:
                if self._low(sec, lo, hi, -delta):
                    raise ValueError(f"count of some frame of [{(sec << SECTION_SHIFT) + lo:#x}"
                                     f", {(sec << SECTION_SHIFT) + hi:#x}) would go below zero")
        found: list[I64Array] = []
        for sec, lo, hi in spans:
            self.total += delta * (hi - lo)
            if hi - lo == SECTION_FRAMES and sec not in self._sections:  # a whole section
                before = self._uniform.pop(sec, 0)
                after = before + delta
                if after:
                    self._uniform[sec] = after
                self.nonzero_frames += SECTION_FRAMES * ((after != 0) - (before != 0))
                if zeros and delta < 0 and not after:
                    found.append(np.arange(SECTION_FRAMES, dtype=np.int64)
                                 + (sec << SECTION_SHIFT))
                continue
            seg = self._section(sec)[lo:hi]
            before_nz = int(np.count_nonzero(seg))
            seg += delta
            after_nz = int(np.count_nonzero(seg))
            self.nonzero_frames += after_nz - before_nz
            if zeros and delta < 0 and after_nz < hi - lo:
                found.append(np.flatnonzero(seg == 0).astype(np.int64)
                             + ((sec << SECTION_SHIFT) + lo))
            if not lo or hi == SECTION_FRAMES:
                self._compress(sec)
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def range(self, pfn: int, count: int) -> I32Array:
        """The counts of ``count`` frames from ``pfn`` (a copy)."""
        out = np.zeros(count, dtype=np.int32)
        done = 0
        for sec, lo, hi in self._spans(pfn, count):
            arr = self._sections.get(sec)
            if arr is not None:
                out[done:done + hi - lo] = arr[lo:hi]
            elif sec in self._uniform:
                out[done:done + hi - lo] = self._uniform[sec]
            done += hi - lo
        return out

    # -- sets of frames -------------------------------------------------------------------------
    @staticmethod
    def _few_runs(pfns: I64Array) -> list[tuple[int, int]] | None:
        """``pfns`` as ``(first, count)`` runs when they are long (a Python step per run
        beats a scattered update), else None."""
        brk = _breaks(pfns)
        return None if len(brk) > max(16, len(pfns) >> 6) else _runs_at(pfns, brk)

    @staticmethod
    def _stretches(pfns: I64Array) -> list[tuple[int, int, int]]:
        """``(section, first, last + 1)`` of each stretch of ``pfns`` in one section."""
        if not len(pfns):
            return []
        secs = pfns >> SECTION_SHIFT
        cuts = (np.flatnonzero(secs[1:] != secs[:-1]) + 1).tolist()
        bounds = [0, *cuts, len(pfns)]
        heads = secs[bounds[:-1]].tolist()
        return [(s, a, b) for s, a, b in zip(heads, bounds[:-1], bounds[1:], strict=True)]

    def add(self, pfns: I64Array, delta: int) -> I64Array:
        """Add ``delta`` to the count of each of ``pfns`` (distinct frames); for a negative
        ``delta``, the frames whose count is now 0 (else an empty array)."""
        runs = self._few_runs(pfns)
        if runs is not None:
            return self.add_runs(runs, delta)
        stretches = self._stretches(pfns)
        mask = SECTION_FRAMES - 1
        if delta < 0:
            for sec, a, b in stretches:
                arr = self._sections.get(sec)
                low = self._uniform.get(sec, 0) < -delta if arr is None else \
                    bool((arr[pfns[a:b] & mask] < -delta).any())
                if low:
                    raise ValueError(f"count of some frame of {len(pfns)} from "
                                     f"{int(pfns[0]):#x} would go below zero")
        zeros: list[I64Array] = []
        for sec, a, b in stretches:
            arr = self._section(sec)
            idx = pfns[a:b] & mask
            before = int(np.count_nonzero(arr[idx]))
            arr[idx] += delta
            now = arr[idx]
            self.nonzero_frames += int(np.count_nonzero(now)) - before
            if delta < 0:
                zeros.append(pfns[a:b][now == 0])
        self.total += delta * len(pfns)
        return np.concatenate(zeros) if zeros else np.zeros(0, dtype=np.int64)

    def get(self, pfns: I64Array) -> I32Array:
        """The count of each of ``pfns``."""
        runs = self._few_runs(pfns)
        if runs is not None:
            parts = [self.range(pfn, count) for pfn, count in runs]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        out = np.zeros(len(pfns), dtype=np.int32)
        mask = SECTION_FRAMES - 1
        for sec, a, b in self._stretches(pfns):
            arr = self._sections.get(sec)
            if arr is not None:
                out[a:b] = arr[pfns[a:b] & mask]
            elif sec in self._uniform:
                out[a:b] = self._uniform[sec]
        return out

    def nonzero_in(self, pfn: int, count: int) -> I64Array:
        """The frames of ``[pfn, pfn + count)`` with a non-zero count, in order. O(count)
        numpy work over the sections that have counts, a Python step per section."""
        parts = []
        for sec, lo, hi in self._spans(pfn, count):
            arr = self._sections.get(sec)
            base = (sec << SECTION_SHIFT) + lo
            if arr is not None:
                parts.append(np.flatnonzero(arr[lo:hi]).astype(np.int64) + base)
            elif sec in self._uniform:
                parts.append(np.arange(base, base + hi - lo, dtype=np.int64))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def nonzero(self) -> I64Array:
        """The frames with a non-zero count, in address order. O(counted sections)."""
        parts = []
        for sec in sorted(self._sections.keys() | self._uniform.keys()):
            arr = self._sections.get(sec)
            base = sec << SECTION_SHIFT
            parts.append(np.flatnonzero(arr).astype(np.int64) + base if arr is not None
                         else np.arange(base, base + SECTION_FRAMES, dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def model_bytes(self) -> int:
        """Lab: the bytes this model keeps for the counts (arrays, plus a rough 100 bytes
        per dict entry of either kind), for the memory accounting of the benchmarks."""
        return sum(arr.nbytes for arr in self._sections.values()) + \
            100 * (len(self._sections) + len(self._uniform))

    def _check(self) -> None:
        frames = total = 0
        assert not self._sections.keys() & self._uniform.keys(), "section kept twice"
        for arr in self._sections.values():
            assert (arr >= 0).all(), "negative count"
            frames += int(np.count_nonzero(arr))
            total += int(arr.sum())
        for value in self._uniform.values():
            assert value > 0, "a uniform section of count 0 is kept"
            frames += SECTION_FRAMES
            total += value * SECTION_FRAMES
        assert frames == self.nonzero_frames and total == self.total, "count totals drifted"


class PinCounts(FrameCounts):
    """Pin counts by pfn (``pinned_frames`` frames hold ``pins`` pins)."""

    @property
    def pinned_frames(self) -> int:
        return self.nonzero_frames

    @property
    def pins(self) -> int:
        return self.total

    def pin(self, pfn: int, count: int = 1) -> None:
        self.add_range(pfn, count, 1)

    def unpin(self, pfn: int, count: int = 1) -> None:
        try:
            self.add_range(pfn, count, -1)
        except ValueError:
            raise ValueError(f"unpin of {count} frames at pfn {pfn:#x}: some frame is not "
                             "pinned") from None

    def count(self, pfn: int) -> int:
        sec = pfn >> SECTION_SHIFT
        arr = self._sections.get(sec)
        if arr is None:
            return self._uniform.get(sec, 0)
        return int(arr[pfn & (SECTION_FRAMES - 1)])

    def counts(self, pfn: int, count: int) -> I32Array:
        """Pin counts of ``count`` frames from ``pfn`` (a copy)."""
        return self.range(pfn, count)
