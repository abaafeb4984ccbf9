"""Stateful property test: a paging domain against the plain reference model."""

from __future__ import annotations

from typing import ClassVar

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab import Prot
from iommulab.errors import KernelError
from iommulab.iommu import IommuDomain, alloc_paging_domain
from iommulab.kernel import LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt, Quirk
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K, SZ_512M

from .reference import ArmLpaeReference

RW = Prot.READ | Prot.WRITE


class _DomainMachine(RuleBasedStateMachine):
    BITMAP: ClassVar[int]
    IAS: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        self.mem = PhysMem("256M")
        self.domain: IommuDomain = alloc_paging_domain(
            IoPgtableFmt.ARM_64_LPAE_S1,
            IoPgtableCfg(self.BITMAP, self.IAS, 40, quirks=Quirk.NO_WARN, kernel=LINUX_7_0),
            mem=self.mem)
        pgtbl = self.domain.pgtbl
        assert pgtbl is not None
        self.pgtbl = pgtbl
        levels = pgtbl.format.levels
        self.granule = levels[-1].block_size
        self.ref = ArmLpaeReference(tuple(lv.block_size for lv in levels),
                                    pgtbl.cfg.pgsize_bitmap, pgtbl.format.ptes_per_page)

    def _region(self, data: st.DataObject) -> tuple[int, int, int]:
        g = self.granule
        big = [s for s in self.ref.level_sizes if s & self.ref.bitmap][-2]  # first block size
        anchor = data.draw(st.sampled_from([0, big, 2 * big, 3 * big - g, 5 * big]))
        iova = max(anchor + g * data.draw(st.integers(-3, 6)), 0)
        pages = data.draw(st.sampled_from([1, 2, 3, big // g - 1, big // g, big // g + 1,
                                           2 * (big // g)]))
        size = pages * g
        delta = data.draw(st.sampled_from([0, g, big, 0x100_0000_0000 // 2]))
        return iova, iova + delta, size

    @rule(data=st.data())
    def map(self, data: st.DataObject) -> None:
        iova, pa, size = self._region(data)
        expected = self.ref.map(iova, pa, size)
        got = 0
        try:
            self.domain.map(iova, pa, size, RW)
        except KernelError as err:
            got = err.errno or -1
        assert got == expected, f"map({iova:#x}, {pa:#x}, {size:#x}): errno {got} != {expected}"

    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        iova, _, size = self._region(data)
        expected = self.ref.unmap(iova, size)
        got = self.domain.unmap(iova, size)
        assert got == expected, f"unmap({iova:#x}, {size:#x}) = {got:#x}, expected {expected:#x}"

    @precondition(lambda self: bool(self.ref.leaves))
    @rule(data=st.data())
    def unmap_a_leaf(self, data: st.DataObject) -> None:
        iova = data.draw(st.sampled_from(sorted(self.ref.leaves)))
        size = self.ref.leaves[iova][0]
        assert self.domain.unmap(iova, size) == self.ref.unmap(iova, size) == size

    @invariant()
    def same_state(self) -> None:
        self.pgtbl._check()
        leaves, tables = {}, set()
        for iova, size, leaf, pte in self.pgtbl.iter_entries():
            if leaf:
                leaves[iova] = (size, self.pgtbl.format.leaf_oa(pte))
            else:
                tables.add((size, iova))
        assert leaves == self.ref.leaves
        assert tables == self.ref.tables
        for iova, (size, pa) in list(leaves.items())[:50]:
            probe = iova + size - 1
            assert self.domain.iova_to_phys(probe) == pa + size - 1 == self.ref.iova_to_phys(
                probe)

    def teardown(self) -> None:
        self.domain.free()
        assert self.mem.iommu_pages == 0 and self.mem.frames.allocated_blocks == 0


class Granule4K(_DomainMachine):
    BITMAP = SZ_4K | SZ_2M | SZ_1G
    IAS = 39


class Granule64K(_DomainMachine):
    BITMAP = SZ_64K | SZ_512M
    IAS = 42


TestGranule4K = Granule4K.TestCase
TestGranule4K.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestGranule64K = Granule64K.TestCase
TestGranule64K.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
