"""Stateful property test: a guest changes its first stage, invalidates (or forgets to)
and a device does DMA through a nested HWPT, against a plain model of what the guest's
table says and what the IOTLB may still hold (VT-d spec 6.5.2: translations stay cached
until an invalidation covers them; a write through an entry a read filled walks again;
the driver widens a page range to an aligned power-of-two block).
"""

from __future__ import annotations

import struct

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iommulab.errors import DmaFault

from .test_nested import _OPEN, GUEST, Nest, _nest

IOVA = 0x4000_0000
PAGES = 8
GUEST_DATA = 32  # guest pages 32-47 are the DMA targets


class NestedIotlbMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.n: Nest = _nest()
        self.hwpt = self.n.nested()
        self.n.attach(self.hwpt)
        self.table: dict[int, tuple[int, bool]] = {}  # page -> (guest page, writable)
        self.tlb: dict[int, tuple[int, bool, bool]] = {}  # page -> (gpage, writable, written)

    def teardown(self) -> None:
        _OPEN.remove(self.n)  # closed here, not by test_nested's fixture
        self.n.close()

    @rule(page=st.integers(0, PAGES - 1), gpage=st.integers(0, 15), writable=st.booleans())
    def guest_maps(self, page: int, gpage: int, writable: bool) -> None:
        self.n.fs.map(IOVA + page * 4096, GUEST + (GUEST_DATA + gpage) * 4096, write=writable)
        self.table[page] = (GUEST_DATA + gpage, writable)

    @rule(page=st.integers(0, PAGES - 1))
    def guest_unmaps(self, page: int) -> None:
        if page in self.table:
            self.n.fs.unmap(IOVA + page * 4096)
            del self.table[page]

    @rule(page=st.integers(0, PAGES - 1), npages=st.sampled_from([1, 2, (1 << 64) - 1]))
    def guest_invalidates(self, page: int, npages: int) -> None:
        addr = 0 if npages == (1 << 64) - 1 else IOVA + page * 4096
        assert self.n.invalidate([(addr, npages, 0, 0)], hwpt=self.hwpt) == (0, 1)
        if npages == (1 << 64) - 1:
            self.tlb.clear()
            return
        # the flush covers the smallest naturally aligned power-of-two block of pages
        # holding the range (cache.c calculate_psi_aligned_address), so neighbours go too
        first, last = (IOVA >> 12) + page, (IOVA >> 12) + page + npages - 1
        k = 0
        while first >> k != last >> k:
            k += 1
        lo = (first >> k << k) - (IOVA >> 12)
        for p in range(lo, lo + (1 << k)):
            self.tlb.pop(p, None)

    @rule(page=st.integers(0, PAGES - 1), write=st.booleans())
    def device_dma(self, page: int, write: bool) -> None:
        iova = IOVA + page * 4096 + 16
        cached = self.tlb.get(page)
        if cached is not None and (cached[2] or not write):
            want: int | None = cached[0] if not write or cached[1] else None
        elif page in self.table and (not write or self.table[page][1]):
            gpage, writable = self.table[page]
            self.tlb[page] = (gpage, writable, write)
            want = gpage
        else:
            want = None
        data = struct.pack("<Q", iova ^ len(self.tlb))
        try:
            if write:
                self.n.dev.dma_write(iova, data)
            else:
                got = self.n.dev.dma_read(iova, 8)
        except DmaFault:
            assert want is None, f"page {page}: faulted, the model says guest page {want}"
            return
        assert want is not None, f"page {page}: translated, the model says it faults"
        va = self.n.gpa_to_va(GUEST + want * 4096 + 16)
        assert self.n.p.read(va, 8) == (data if write else got)

    @invariant()
    def iotlb_holds_what_the_model_allows(self) -> None:
        self.n.sm._check()
        held = {k[3] - (IOVA >> 12) for k in self.n.sm.iotlb}
        assert held == set(self.tlb), (held, set(self.tlb))


NestedIotlbMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=25,
                                                deadline=None)
TestNestedIotlb = NestedIotlbMachine.TestCase
