"""Stateful check: whatever the domain went through, a device only ever reaches what is mapped.

Against a plain dict of slot -> physical address, random maps (blocks or
pages), unmaps, dirty reads, DMA and split/merge cycles run on a domain
behind the SMMU model. After every synced change the hardware's answer for
any address (IOTLB hit or walk) must be the reference's: the IOTLB never
serves a translation that was unmapped, moved or merged away.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from iommulab import Prot
from iommulab.drivers.smmuv3 import HWPT_ALLOC_DIRTY_TRACKING, ArmSmmuDomain, IotlbConfig
from iommulab.errors import DmaFault
from iommulab.sizes import SZ_2M, SZ_4K

from .platform import RW, Platform, make_platform

SLOTS = 6
BASE = 0x80_0000_0000
slots = st.integers(0, SLOTS - 1)
targets = st.integers(0, 3)  # which 2M of the buffer a slot maps
pages = st.integers(0, 511)


class SmmuDomainMachine(RuleBasedStateMachine):
    plat: Platform
    domain: ArmSmmuDomain

    @initialize(iotlb=st.sampled_from([IotlbConfig.qemu(), IotlbConfig.gem5(),
                                       IotlbConfig.tiny()]))
    def setup(self, iotlb: IotlbConfig) -> None:
        self.plat = make_platform(iotlb=iotlb)
        master, self.dev = self.plat.device()
        self.domain = self.plat.domain(master, HWPT_ALLOC_DIRTY_TRACKING)
        self.buf = self.plat.buffer(8 * SZ_2M, fill=False)
        self.ref: dict[int, int] = {}  # slot -> PA of its first byte
        self.tracking = False

    def teardown(self) -> None:
        if hasattr(self, "plat"):
            self.plat.close()

    @rule(slot=slots, where=targets)
    def map_block(self, slot: int, where: int) -> None:
        if slot in self.ref:
            return
        pa = self.buf + where * SZ_2M
        self.domain.map(BASE + slot * SZ_2M, pa, SZ_2M, RW)
        self.ref[slot] = pa

    @rule(slot=slots, where=targets)
    def map_pages(self, slot: int, where: int) -> None:
        if slot in self.ref:
            return
        pa = self.buf + where * SZ_2M + SZ_4K  # not 2M aligned: 512 page entries
        self.domain.map(BASE + slot * SZ_2M, pa, SZ_2M, Prot.READ | Prot.WRITE)
        self.ref[slot] = pa

    @rule(slot=slots)
    def unmap(self, slot: int) -> None:
        if slot in self.ref:
            assert self.domain.unmap(BASE + slot * SZ_2M, SZ_2M) == SZ_2M
            del self.ref[slot]

    @rule(slot=slots, page=pages, write=st.booleans())
    def dma(self, slot: int, page: int, write: bool) -> None:
        iova = BASE + slot * SZ_2M + page * SZ_4K + 8
        try:
            if write:
                self.dev.dma_write(iova, b"dma")
            else:
                self.dev.dma_read(iova, 3)
        except DmaFault:
            assert slot not in self.ref, f"fault on mapped iova {iova:#x}"
            return
        assert slot in self.ref, f"DMA reached unmapped iova {iova:#x}"
        if write:
            assert self.plat.mem.read(self.ref[slot] + page * SZ_4K + 8, 3) == b"dma"

    @precondition(lambda self: not self.tracking)
    @rule()
    def start_tracking(self) -> None:
        self.domain.set_dirty_tracking(True, granule=SZ_4K)
        self.tracking = True

    @precondition(lambda self: self.tracking)
    @rule()
    def stop_tracking(self) -> None:
        self.domain.set_dirty_tracking(False)
        self.tracking = False

    @rule()
    def read_dirty(self) -> None:
        for slot in self.ref:
            self.domain.read_and_clear_dirty(BASE + slot * SZ_2M, SZ_2M)

    @invariant()
    def hardware_agrees_with_the_reference(self) -> None:
        if not hasattr(self, "plat"):
            return
        for slot in range(SLOTS):
            for page in (0, 257, 511):
                iova = BASE + slot * SZ_2M + page * SZ_4K
                try:
                    pa = self.plat.hw.translate(0x10, iova)
                except DmaFault:
                    assert slot not in self.ref
                else:
                    assert self.ref.get(slot, -1) + page * SZ_4K == pa
        assert self.domain.pgtbl is not None
        self.domain.pgtbl._check()
        self.plat.hw._check()


SmmuDomainMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                               deadline=None)
TestSmmuDomain = SmmuDomainMachine.TestCase
