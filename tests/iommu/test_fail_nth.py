"""Fault-injection sweep after tools/testing/selftests/iommu/iommufd_fail_nth.c.

For each operation of a sequence, fail the n-th allocation for n = 1, 2, …
until the operation no longer fails. After each failure: ENOMEM, the
translations are exactly as before, and every page of table memory is
reachable from the root (nothing leaked). As in the kernel, tables
installed on the way down before the failing allocation stay installed
(empty); ``__arm_lpae_map`` does not free them and neither does the
core's rollback. At the end, freeing the domain returns every frame.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iommulab import Prot
from iommulab.errors import OutOfMemory
from iommulab.iommu import IommuDomain, SgEntry, alloc_paging_domain
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M

RW = Prot.READ | Prot.WRITE
Op = Callable[[IommuDomain], object]



def _ops(g: int, b: int) -> list[tuple[str, Op]]:
    """A sequence of domain operations for granule ``g`` and first block size ``b``."""
    return [
        ("map one page", lambda d: d.map(2 * SZ_1G, 0x8000_0000, g, RW)),
        ("map across tables", lambda d: d.map(SZ_1G - 3 * g, 0x9000_0000 + g, b + 6 * g, RW)),
        ("map a 1G region", lambda d: d.map(3 * SZ_1G, 0x1_0000_0000, SZ_1G, RW)),
        ("map mixed sizes", lambda d: d.map(5 * SZ_1G - g, 5 * SZ_1G - g,
                                            SZ_1G + 2 * b + g, RW)),
        ("map_sg", lambda d: d.map_sg(7 * SZ_1G, [SgEntry(0x8000_0000, g),
                                                  SgEntry(0xA000_0000, 2 * b)], RW)),
        ("unmap", lambda d: d.unmap(SZ_1G - 3 * g, b + 6 * g)),
        ("map into freed range", lambda d: d.map(SZ_1G, 0xB000_0000, 4 * g, RW)),
    ]


def _translations(d: IommuDomain) -> list[tuple[int, int, int]]:
    assert d.pgtbl is not None
    return [(iova, size, pte) for iova, size, leaf, pte in d.pgtbl.iter_entries() if leaf]


@pytest.mark.parametrize(("g", "b"), [(SZ_4K, SZ_2M), (SZ_16K, SZ_32M)])
def test_fail_nth_sweep(g: int, b: int) -> None:
    cfg = IoPgtableCfg(g | b | (SZ_1G if g == SZ_4K else 0), 48, 48)
    ops = _ops(g, b)
    fmt = IoPgtableFmt.ARM_64_LPAE_S1
    failures = 0
    for index, (name, op) in enumerate(ops):
        nth = 1
        while True:
            mem = PhysMem("1G")
            d = alloc_paging_domain(fmt, cfg, mem=mem)
            for _, earlier in ops[:index]:
                earlier(d)
            before = _translations(d)
            mem.fail_nth.arm(nth)
            try:
                op(d)
            except OutOfMemory:
                failures += 1
                assert mem.fail_nth.triggered, name
                assert _translations(d) == before, f"{name}: state changed at fail-nth {nth}"
                assert d.pgtbl is not None
                d.pgtbl._check()  # every held table is reachable: nothing leaked
                assert mem.iommu_pages * SZ_4K == d.pgtbl.stats.table_bytes
                mem.fail_nth.disarm()
                op(d)  # the same operation succeeds once memory is there
            else:
                assert not mem.fail_nth.triggered, f"{name}: failure injected but swallowed"
                mem.fail_nth.disarm()
                d.free()
                assert mem.iommu_pages == 0 and mem.frames.allocated_blocks == 0
                break
            d.free()
            assert mem.frames.allocated_blocks == 0
            nth += 1
    assert failures >= 8
