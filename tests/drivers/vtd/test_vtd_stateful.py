"""Stateful property test: VT-d domains of both kernels against a plain dict of mappings.

Maps go to free IOVA ranges and unmaps take whole earlier mappings, where 6.12's table
code and 7.0's generic_pt agree with the plain model; the runs of entries, superpages,
tables across table pages and freeing are what is exercised.
"""

from __future__ import annotations

from typing import ClassVar

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab import Prot
from iommulab.drivers.vtd import IntelIommu, VtdHw
from iommulab.iommu.pgsize import iommu_pgsize
from iommulab.kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE
RAM = 0x4000_0000  # PhysMem's RAM base


class _VtdMachine(RuleBasedStateMachine):
    KERNEL: ClassVar[KernelVersion]

    def __init__(self) -> None:
        super().__init__()
        self.mem = PhysMem("64M")
        self.drv = IntelIommu(VtdHw(self.mem, aw=48), kernel=self.KERNEL)
        self.master = self.drv.probe_device(0x10)
        self.domain = self.drv.domain_alloc_paging(self.master)
        self.drv.attach_dev(self.domain, self.master)
        assert self.domain.pgtbl is not None
        self.pgtbl = self.domain.pgtbl
        self.maps: dict[int, tuple[int, int]] = {}  # iova -> (size, pa)

    def _free(self, iova: int, size: int) -> bool:
        return all(iova + size <= a or a + s <= iova for a, (s, _) in self.maps.items())

    @rule(anchor=st.sampled_from([0, SZ_2M, SZ_1G - SZ_2M, SZ_1G, 3 * SZ_1G]),
          pages=st.integers(-3, 3), count=st.sampled_from([1, 3, 511, 512, 513, 1024, 1536]),
          pa_shift=st.sampled_from([0, SZ_4K, SZ_2M]))
    def map(self, anchor: int, pages: int, count: int, pa_shift: int) -> None:
        iova = max(anchor + pages * SZ_4K, 0)
        size = count * SZ_4K
        pa = RAM + pa_shift + (anchor & (SZ_1G - 1))
        if not self._free(iova, size):
            return
        self.domain.map(iova, pa, size, RW)
        self.maps[iova] = (size, pa)

    @precondition(lambda self: bool(self.maps))
    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        iova = data.draw(st.sampled_from(sorted(self.maps)))
        size, _ = self.maps.pop(iova)
        assert self.domain.unmap(iova, size) == size

    @invariant()
    def same_state(self) -> None:
        self.pgtbl._check()
        want = sorted((iova, pa, size) for iova, (size, pa) in self.maps.items())
        merged: list[tuple[int, int, int]] = []
        for iova, pa, size in want:  # runs continue while IOVA and PA both do
            if merged and merged[-1][0] + merged[-1][2] == iova and \
                    merged[-1][1] + merged[-1][2] == pa:
                merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + size)
            else:
                merged.append((iova, pa, size))
        assert self.domain.leaf_runs(0, 1 << 48) == merged
        sizes: dict[int, int] = {}
        for iova, pa, size in want:
            assert self.domain.iova_to_phys(iova + size - 1) == pa + size - 1
            a, p, left = iova, pa, size
            while left:  # the leaves iommu_pgsize (6.12) and pt_compute_best_pgsize pick
                pgsize, n = iommu_pgsize(self.domain.pgsize_bitmap, a, p, left)
                sizes[pgsize] = sizes.get(pgsize, 0) + n
                a, p, left = a + n * pgsize, p + n * pgsize, left - n * pgsize
        assert self.domain.leaf_histogram() == dict(sorted(sizes.items()))
        assert not self.pgtbl.stats.warnings and not self.domain.warnings

    def teardown(self) -> None:
        self.drv.release_device(self.master)
        self.domain.free()
        assert self.mem.iommu_pages == 0


class Legacy612(_VtdMachine):
    KERNEL = LINUX_6_12


class GenericPt70(_VtdMachine):
    KERNEL = LINUX_7_0


TestLegacy612 = Legacy612.TestCase
TestLegacy612.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
TestGenericPt70 = GenericPt70.TestCase
TestGenericPt70.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
