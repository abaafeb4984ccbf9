"""A process's memory through the CPU: reads and writes across pages and folios."""

from __future__ import annotations

import numpy as np
import pytest

from iommulab.errors import BadAddress
from iommulab.mem import PhysMem
from iommulab.mem.mm import MmStruct, pfn_runs


def test_pfn_runs() -> None:
    assert pfn_runs(np.array([5, 6, 7, 9, 3, 4], dtype=np.int64)) == [(5, 3), (9, 1), (3, 2)]
    assert pfn_runs(np.empty(0, dtype=np.int64)) == []


@pytest.mark.parametrize("backing", ["anon", "thp"])
def test_unaligned_access_across_pages(backing: str) -> None:
    mm = MmStruct(PhysMem("64M"))
    va = mm.mmap(4 << 20, backing)
    data = bytes(range(256)) * 40  # 10 KiB from 6 bytes before a page end
    mm.write(va + 0xFFA, data)
    assert mm.read(va + 0xFFA, len(data)) == data
    assert mm.read(va + 0xFF9, 1) == b"\0"
    ro = mm.mmap(4096, writable=False)
    with pytest.raises(BadAddress):
        mm.write(ro, b"x")
    mm.close()
    assert mm.mem.frames.allocated_blocks == 0
