"""IovaDomain under random alloc/free/reserve, against plain sets of pfns.

The space straddles the 32-bit boundary so both cursors and the retry pass
are used. The model knows which pfns the user owns and reserved; the tree
must hold exactly those plus the ranges sitting in the caches, and the
caches may only hold ranges the user gave back with ``free_iova_fast``.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab.clock import Clock
from iommulab.iova import IovaDomain

START = 0xFFE00
DMA32 = 1 << 20
LIMITS = [0xFFE3F, DMA32 - 1, DMA32 + 0x1FF]
TOP = DMA32 + 0x1FF


def _fits(free: set[int], size: int, limit: int, aligned: bool) -> bool:
    step = 1 << (size - 1).bit_length() if aligned else 1
    lo = -(-START // step) * step
    for base in range(lo, limit - size + 2, step):
        if all(p in free for p in range(base, base + size)):
            return True
    return False


class _IovaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(hz=100)
        self.d = IovaDomain(4096, START, ncpus=2, clock=self.clock)
        self.owned: dict[int, tuple[int, int, bool]] = {}  # lo -> (nodesize, asked, fast)
        self.reserved: set[int] = set()
        self.given_back: set[int] = set()  # pfns freed with free_iova_fast

    def _cover(self) -> set[int]:
        return {p for r in self.d.ranges() for p in range(r.pfn_lo, r.pfn_hi + 1)}

    def _cached_nodes(self) -> set[int]:
        out: set[int] = set()
        for pfn in self.d.rcaches.cached_pfns():
            r = self.d.find_iova(pfn)
            assert r is not None
            out.update(range(r.pfn_lo, r.pfn_hi + 1))
        return out

    def _owned_pfns(self) -> set[int]:
        return {p for lo, (n, _, _) in self.owned.items() for p in range(lo, lo + n)}

    @rule(size=st.integers(1, 40), limit=st.sampled_from(LIMITS), aligned=st.booleans())
    def alloc(self, size: int, limit: int, aligned: bool) -> None:
        before = self._cover()
        fast_fails = self.d.stats.fast_fails_32
        got = self.d.alloc_iova(size, limit, aligned)
        if got is None:
            if self.d.stats.fast_fails_32 == fast_fails:
                free = set(range(START, limit + 1)) - before
                assert not _fits(free, size, limit, aligned)
            return
        assert got.pfn_lo >= START and got.pfn_hi <= limit and got.size == size
        if aligned:
            assert got.pfn_lo % (1 << (size - 1).bit_length()) == 0
        assert not set(range(got.pfn_lo, got.pfn_hi + 1)) & before
        self.owned[got.pfn_lo] = (size, size, False)

    @rule(size=st.integers(1, 40), limit=st.sampled_from(LIMITS), cpu=st.integers(0, 1),
          flush=st.booleans())
    def alloc_fast(self, size: int, limit: int, cpu: int, flush: bool) -> None:
        before = self._cover() - self._cached_nodes()
        pfn = self.d.alloc_iova_fast(size, limit, flush, cpu)
        if not pfn:
            return
        node = self.d.find_iova(pfn)
        assert node is not None and node.pfn_lo == pfn and node.pfn_hi <= limit
        assert node.size >= size
        assert not set(range(node.pfn_lo, node.pfn_hi + 1)) & before
        self.given_back.discard(pfn)
        self.owned[pfn] = (node.size, size, True)

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), cpu=st.integers(0, 1))
    def free(self, data: st.DataObject, cpu: int) -> None:
        lo = data.draw(st.sampled_from(sorted(self.owned)))
        _, asked, fast = self.owned.pop(lo)
        if fast:
            self.d.free_iova_fast(lo, asked, cpu)
            self.given_back.add(lo)
        else:
            self.d.free_iova(lo + asked - 1)  # any pfn of the range frees it

    @rule(lo=st.integers(START - 8, TOP), n=st.integers(1, 24))
    def reserve(self, lo: int, n: int) -> None:
        hi = min(lo + n - 1, TOP)
        pfns = set(range(lo, hi + 1))
        if pfns & (self._owned_pfns() | self._cached_nodes()):
            return  # reserving over user ranges is covered by the unit tests
        assert self.d.reserve_iova(lo, hi) is not None
        self.reserved |= pfns

    @rule(ms=st.integers(0, 300))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms * 1_000_000)

    @invariant()
    def tree_matches_model(self) -> None:
        self.d._check()
        cached = self._cached_nodes()
        owned = self._owned_pfns()
        assert not cached & owned, "a cached range is also owned"
        assert self._cover() == owned | self.reserved | cached
        assert set(self.d.rcaches.cached_pfns()) <= self.given_back


TestIova = _IovaMachine.TestCase
TestIova.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
