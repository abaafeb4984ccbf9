"""Fault injection for allocation points, after the kernel's ``fail_nth``.

Writing ``n`` to ``/proc/self/task/<tid>/fail-nth`` makes the n-th following
call to any fault-injection-capable allocation fail (once); the kernel's
iommufd_fail_nth selftest sweeps n = 1, 2, … until an operation no longer
fails. :class:`FailNth` is that counter; every allocation point in the model
calls :meth:`FailNth.check` (or :meth:`FailNth.fails`) before allocating, named
after the kernel call (``kzalloc(iopt_area)``).

Three kinds of point count, as under the iommufd selftest's kernel config
(CONFIG_FAILSLAB, fail_page_alloc where built, CONFIG_IOMMUFD_TEST):
allocations (``kmalloc`` and friends, page allocations), xarray node
allocations (:meth:`FailNth.xa_nodes`: an xarray retries a failed node
allocation, so under fail-nth such a failure is never seen) and, only on a
CONFIG_IOMMUFD_TEST kernel (the ``mock`` platform, :attr:`FailNth.iommufd_test`),
the ``iommufd_should_fail()`` points, whose errno is the caller's (ENOENT from
``iommufd_get_object``, EFAULT from ``pfn_reader_user_pin``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ..errors import OutOfMemory

__all__ = ["FailNth", "xa_nodes_needed"]

XA_CHUNK_SHIFT = 6  # CONFIG_BASE_SMALL=n: 64 slots per xa_node
_PAGE_SIZE = 4096


class FailNth:
    """Counts allocation calls and fails the armed one with ENOMEM.

    ``iommufd_test``: the kernel is built with CONFIG_IOMMUFD_TEST, so the
    ``iommufd_should_fail()`` points exist. ``fired``: the site of the armed
    failure once it fired. ``log``: when a list, every site reached is appended
    (lab: the order of a path's allocation points)."""

    def __init__(self, *, iommufd_test: bool = False) -> None:
        self.calls = 0  # allocation calls seen since creation (lab statistic)
        self._remaining = 0  # 0 = disarmed
        self.triggered = False  # whether the armed failure fired
        self.fired: str | None = None
        self.iommufd_test = iommufd_test
        self.log: list[str] | None = None
        self._within: list[str] = []  # callers that absorb a failure, innermost last

    def arm(self, nth: int) -> None:
        """Make the ``nth`` allocation call from now on fail (1 = the next one)."""
        if nth < 1:
            raise ValueError(f"fail-nth must be >= 1, not {nth}")
        self._remaining = nth
        self.triggered = False
        self.fired = None

    def disarm(self) -> None:
        self._remaining = 0

    @property
    def armed(self) -> bool:
        return self._remaining != 0

    @property
    def remaining(self) -> int:
        """The counter as ``/proc/.../fail-nth`` reads it: 0 when disarmed or fired."""
        return self._remaining

    def load(self, remaining: int) -> None:
        """Lab: make ``remaining`` the counter as it is, with no fresh :meth:`arm` (a
        task's saved ``fail_nth`` coming back: ``iommulab exec`` keeps one a thread and
        loads it around that thread's calls into the model)."""
        if remaining < 0:
            raise ValueError(f"fail-nth counter {remaining} < 0")
        self._remaining = remaining

    @contextlib.contextmanager
    def within(self, caller: str) -> Iterator[None]:
        """Name the points reached inside ``caller`` after it (``caller: site``): a
        caller that carries on after a failure (a ``nofail`` detach, a probe whose result
        is optional) makes those failures its own."""
        self._within.append(caller)
        try:
            yield
        finally:
            self._within.pop()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Lab: the points reached inside are none of the kernel's (the model's own
        bookkeeping, e.g. ``iommulab exec`` mirroring a program's mappings): they are
        neither counted, logged nor failed."""
        saved = self._remaining, self.log, self.calls
        self._remaining, self.log = 0, None
        try:
            yield
        finally:
            self._remaining, self.log = saved[0], saved[1]
            self.calls = saved[2]

    def fails(self, site: str) -> bool:
        """Like :meth:`check`, for allocation points that return NULL instead of raising."""
        if self._within:
            site = f"{self._within[-1]}: {site}"
        self.calls += 1
        if self.log is not None:
            self.log.append(site)
        if self._remaining:
            self._remaining -= 1
            if self._remaining == 0:
                self.triggered = True
                self.fired = site
                return True
        return False

    def passes(self, site: str, n: int) -> None:
        """``n`` allocation points at ``site`` in a row while nothing is armed: counted
        and logged as ``n`` calls of :meth:`fails` (that would all pass) are."""
        assert not self._remaining, "passes() while a failure is armed"
        if self._within:
            site = f"{self._within[-1]}: {site}"
        self.calls += n
        if self.log is not None:
            self.log.extend([site] * n)

    def check(self, site: str) -> None:
        """Called by an allocation point; raises ENOMEM if this is the armed call."""
        if self.fails(site):
            raise OutOfMemory(f"injected allocation failure at {site} (fail-nth)")

    def kvmalloc(self, site: str, size: int) -> None:
        """``kvmalloc`` (``kvzalloc``, ``kvcalloc``) of ``size`` bytes: ``kmalloc`` first;
        past a page its failure falls back to ``vmalloc`` (one point here for its
        allocations), which fail-nth then lets through."""
        if self.fails(f"kvmalloc({site})"):
            if size <= _PAGE_SIZE:
                raise OutOfMemory(f"injected allocation failure at kvmalloc({site}) "
                                  "(fail-nth)")
            self.check(f"vmalloc({site})")

    def iommufd_should_fail(self, site: str) -> bool:
        """``iommufd_should_fail()``: a point only on a CONFIG_IOMMUFD_TEST kernel; the
        caller turns True into its own errno."""
        return self.iommufd_test and self.fails(f"iommufd_should_fail({site})")

    def xa_nodes(self, site: str, nodes: int) -> None:
        """``nodes`` xarray node allocations (``xas_alloc``): each is tried with
        GFP_NOWAIT under the lock and, if that fails, again by ``xas_nomem`` with the
        caller's gfp, which fail-nth (one failure only) lets through. So these points
        never fail an operation; they only move the later points along."""
        for _ in range(nodes):
            if self.fails(f"xas_alloc({site})"):
                self.check(f"xas_nomem({site})")


def xa_nodes_needed(present: npt.NDArray[np.int64] | npt.NDArray[np.uint64], lo: int,
                    hi: int, *, root_ok: bool = True) -> int:
    """How many ``xa_node``s an xarray holding the indexes ``present`` (sorted, unique)
    allocates to store ``[lo, hi]`` as well: one per 64-slot chunk, at each level of the
    tree up to the height the largest index needs, that no present index is in yet. An
    array whose only entry is index 0 keeps it in the head without a node, unless the
    entry cannot live there (``root_ok`` False: the ``XA_ZERO_ENTRY`` ``xa_alloc``
    reserves with). ``present`` is int64, or uint64 for indexes past 2^63 (an
    ``unsigned long`` index up to 2^64 - 1: 11 levels). Vectorised: O(levels x
    len(present))."""
    return _count(present, lo, hi, root_ok) - _count(present, 1, 0, root_ok)


def _count(present: npt.NDArray[np.int64] | npt.NDArray[np.uint64], lo: int, hi: int,
           root_ok: bool) -> int:
    """Nodes of an xarray holding ``present`` and ``[lo, hi]`` (empty when lo > hi)."""
    top = max(int(present[-1]) if len(present) else -1, hi if lo <= hi else -1)
    if top < 0 or (top == 0 and root_ok):
        return 0
    nodes, level = 0, 1
    while True:
        shift = XA_CHUNK_SHIFT * level
        chunks = np.unique(present >> shift)
        if lo <= hi:
            c_lo, c_hi = lo >> shift, hi >> shift
            nodes += int(np.count_nonzero((chunks < c_lo) | (chunks > c_hi))) + c_hi - c_lo + 1
        else:
            nodes += len(chunks)
        if not top >> shift:
            return nodes
        level += 1
