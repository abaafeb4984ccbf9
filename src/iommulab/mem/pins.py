"""Per-frame pin counts kept by memory section, as arrays.

Linux keeps a pin count in each ``struct page`` (``GUP_PIN_COUNTING_BIAS``);
the model keeps one ``int32`` per frame in an array per memory section
(128 MiB, x86_64's ``SECTION_SIZE_BITS = 27``), created when a frame of the
section is first pinned. Pinning a range is a slice update per section.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["SECTION_FRAMES", "PinCounts"]

SECTION_SHIFT = 27 - 12
SECTION_FRAMES = 1 << SECTION_SHIFT


class PinCounts:
    """Pin counts by pfn; all mutations are checked first, then applied."""

    def __init__(self) -> None:
        self._sections: dict[int, npt.NDArray[np.int32]] = {}
        self.pinned_frames = 0  # frames with a non-zero count
        self.pins = 0  # sum of all counts

    def _spans(self, pfn: int, count: int) -> list[tuple[int, int, int]]:
        spans = []
        end = pfn + count
        while pfn < end:
            sec = pfn >> SECTION_SHIFT
            lo = pfn & (SECTION_FRAMES - 1)
            hi = min(SECTION_FRAMES, lo + (end - pfn))
            spans.append((sec, lo, hi))
            pfn += hi - lo
        return spans

    def pin(self, pfn: int, count: int = 1) -> None:
        for sec, lo, hi in self._spans(pfn, count):
            arr = self._sections.get(sec)
            if arr is None:
                arr = self._sections[sec] = np.zeros(SECTION_FRAMES, dtype=np.int32)
            seg = arr[lo:hi]
            self.pinned_frames += int(np.count_nonzero(seg == 0))
            seg += 1
        self.pins += count

    def unpin(self, pfn: int, count: int = 1) -> None:
        spans = self._spans(pfn, count)
        for sec, lo, hi in spans:
            arr = self._sections.get(sec)
            if arr is None or not arr[lo:hi].all():
                raise ValueError(
                    f"unpin of {count} frames at pfn {pfn:#x}: some frame is not pinned")
        for sec, lo, hi in spans:
            seg = self._sections[sec][lo:hi]
            seg -= 1
            self.pinned_frames -= int(np.count_nonzero(seg == 0))
        self.pins -= count

    def count(self, pfn: int) -> int:
        arr = self._sections.get(pfn >> SECTION_SHIFT)
        return 0 if arr is None else int(arr[pfn & (SECTION_FRAMES - 1)])

    def counts(self, pfn: int, count: int) -> npt.NDArray[np.int32]:
        """Pin counts of ``count`` frames from ``pfn`` (a copy)."""
        out = np.zeros(count, dtype=np.int32)
        done = 0
        for sec, lo, hi in self._spans(pfn, count):
            arr = self._sections.get(sec)
            if arr is not None:
                out[done:done + hi - lo] = arr[lo:hi]
            done += hi - lo
        return out

    def _check(self) -> None:
        frames = pins = 0
        for arr in self._sections.values():
            assert (arr >= 0).all(), "negative pin count"
            frames += int(np.count_nonzero(arr))
            pins += int(arr.sum())
        assert frames == self.pinned_frames and pins == self.pins, "pin totals drifted"
