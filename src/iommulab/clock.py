"""Simulated time: jiffies, timers and delayed work on a clock nobody but the caller moves.

The kernel's flush-queue timer (``mod_timer``) and the IOVA depot's delayed
work (``schedule_delayed_work``) run from here. Time only passes when the
caller calls :meth:`Clock.advance` (or :meth:`Clock.run_until`), so a run is
deterministic; timers fire in expiry order, each at its jiffy boundary.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["NSEC_PER_SEC", "Clock", "Timer"]

NSEC_PER_SEC = 1_000_000_000


@dataclass(eq=False)
class Timer:
    """``struct timer_list`` / a delayed work item: ``callback`` runs at ``expires`` (jiffies)."""

    callback: Callable[[], None]
    expires: int = 0
    pending: bool = False
    _seq: int = field(default=0, repr=False)


class Clock:
    """A monotonic clock in nanoseconds with ``hz`` jiffies per second (CONFIG_HZ).

    ``msecs_to_jiffies`` rounds up as the kernel's does, so a 10 ms timeout is
    3 jiffies (12 ms) at HZ=250 and 10 jiffies at HZ=1000.
    """

    def __init__(self, hz: int = 250, start_ns: int = 0) -> None:
        if hz <= 0 or NSEC_PER_SEC % hz:
            raise ValueError(f"HZ must divide one second, not {hz}")
        self.hz = hz
        self.now_ns = start_ns
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = 0

    @property
    def jiffies(self) -> int:
        return self.now_ns * self.hz // NSEC_PER_SEC

    def msecs_to_jiffies(self, ms: int) -> int:
        """``msecs_to_jiffies``: round up to whole jiffies."""
        return -(-ms * self.hz // 1000)

    def jiffies_to_ns(self, j: int) -> int:
        return j * NSEC_PER_SEC // self.hz

    def mod_timer(self, timer: Timer, expires: int) -> None:
        """``mod_timer``: (re)arm ``timer`` for jiffy ``expires``."""
        self._seq += 1
        timer.expires, timer.pending, timer._seq = expires, True, self._seq
        heapq.heappush(self._heap, (expires, self._seq, timer))

    def schedule_delayed_work(self, timer: Timer, delay: int) -> bool:
        """``schedule_delayed_work``: arm unless already pending (then False, nothing changes)."""
        if timer.pending:
            return False
        self.mod_timer(timer, self.jiffies + delay)
        return True

    def del_timer(self, timer: Timer) -> None:
        """``timer_delete_sync`` / ``cancel_delayed_work_sync``."""
        timer.pending = False

    def advance(self, ns: int) -> int:
        """Let ``ns`` nanoseconds pass, running every timer that expires; returns how many ran."""
        if ns < 0:
            raise ValueError(f"time does not run backwards ({ns} ns)")
        return self.run_until(self.now_ns + ns)

    def run_until(self, t_ns: int) -> int:
        """Move to ``t_ns``, firing due timers in order at their expiry times."""
        ran = 0
        heap = self._heap
        while heap:
            expires, seq, timer = heap[0]
            at = self.jiffies_to_ns(expires)
            if at > t_ns:
                break
            heapq.heappop(heap)
            if not timer.pending or timer._seq != seq:  # cancelled or re-armed since
                continue
            self.now_ns = max(self.now_ns, at)
            timer.pending = False
            timer.callback()
            ran += 1
        self.now_ns = max(self.now_ns, t_ns)
        return ran

    def next_expiry_ns(self) -> int | None:
        """When the next pending timer fires, or None."""
        for expires, seq, timer in sorted(self._heap):
            if timer.pending and timer._seq == seq:
                return self.jiffies_to_ns(expires)
        return None
