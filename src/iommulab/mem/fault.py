"""Fault injection for allocation points, after the kernel's ``fail_nth``.

Writing ``n`` to ``/proc/self/task/<tid>/fail-nth`` makes the n-th following
call to any fault-injection-capable allocation fail (once); the kernel's
iommufd_fail_nth selftest sweeps n = 1, 2, … until an operation no longer
fails. :class:`FailNth` is that counter; every allocation point in the model
calls :meth:`FailNth.check` before allocating.
"""

from __future__ import annotations

from ..errors import OutOfMemory

__all__ = ["FailNth"]


class FailNth:
    """Counts allocation calls and fails the armed one with ENOMEM."""

    def __init__(self) -> None:
        self.calls = 0  # allocation calls seen since creation (lab statistic)
        self._remaining = 0  # 0 = disarmed
        self.triggered = False  # whether the armed failure fired

    def arm(self, nth: int) -> None:
        """Make the ``nth`` allocation call from now on fail (1 = the next one)."""
        if nth < 1:
            raise ValueError(f"fail-nth must be >= 1, not {nth}")
        self._remaining = nth
        self.triggered = False

    def disarm(self) -> None:
        self._remaining = 0

    @property
    def armed(self) -> bool:
        return self._remaining != 0

    def fails(self, site: str) -> bool:
        """Like :meth:`check`, for allocation points that return NULL instead of raising."""
        try:
            self.check(site)
        except OutOfMemory:
            return True
        return False

    def check(self, site: str) -> None:
        """Called by an allocation point; raises ENOMEM if this is the armed call."""
        self.calls += 1
        if self._remaining:
            self._remaining -= 1
            if self._remaining == 0:
                self.triggered = True
                raise OutOfMemory(f"injected allocation failure at {site} (fail-nth)")
