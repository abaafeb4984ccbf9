"""``iommu_range_alloc`` / ``iommu_free`` against a plain model: a set of taken entries."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iommulab.drivers.pseries.hv import DdwOffer, SpaprPhb
from iommulab.drivers.pseries.lpar import LparTceOps
from iommulab.drivers.pseries.table import DMA_MAPPING_ERROR, IommuTable, iommu_init_table
from iommulab.mem import PhysMem

SIZE, RES = 2048, (700, 760)


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        phb = SpaprPhb(PhysMem("64M", ram_base=0), DdwOffer(dma32_size=SIZE << 12))
        self.phb = phb
        self.tbl = iommu_init_table(IommuTable(phb.liobns[0], 0, SIZE, 12,
                                               LparTceOps(phb, phb.mem)), *RES)
        self.live: dict[int, int] = {}  # first entry -> npages

    @rule(npages=st.integers(1, 40), mask_bits=st.sampled_from([9, 11, 64]),
          align=st.integers(0, 3), cpu=st.integers(0, 7),
          boundary=st.sampled_from([64, 1 << 20]))
    def alloc(self, npages: int, mask_bits: int, align: int, cpu: int, boundary: int) -> None:
        mask = (1 << mask_bits) - 1
        n = self.tbl.range_alloc(npages, mask, align, cpu=cpu, boundary_pages=boundary)
        if n == DMA_MAPPING_ERROR:
            return
        taken = {e for f, k in self.live.items() for e in range(f, f + k)}
        new = set(range(n, n + npages))
        assert not new & taken, "overlapping allocation"
        assert 0 not in new and not new & set(range(*RES)), "reserved entry handed out"
        assert n + npages - 1 <= mask and n % (1 << align) == 0
        assert n // boundary == (n + npages - 1) // boundary
        rc = self.tbl.ops.set(self.tbl, n, npages, 0x10_0000, True)
        assert rc == 0
        self.live[n] = npages

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        if not self.live:
            return
        n = data.draw(st.sampled_from(sorted(self.live)))
        assert self.tbl.free(n << 12, self.live.pop(n))

    @invariant()
    def bitmap_matches_model(self) -> None:
        taken = {e for f, k in self.live.items() for e in range(f, f + k)}
        expect = taken | {0} | set(range(*RES))
        assert set(map(int, self.tbl.it_map.nonzero()[0])) == expect
        assert self.tbl.in_use() == bool(taken)
        assert self.phb.windows[self.phb.liobns[0]].used() == len(taken)


TestTable = TableMachine.TestCase
TestTable.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
