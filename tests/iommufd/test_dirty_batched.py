"""BatchedDirtyBitmap (the dirty walk's records set a batch at a time) against
IommuDirtyBitmap (each record set as it comes): the same bits, refusals and gather."""

from __future__ import annotations

import random

import numpy as np
import pytest

from iommulab.iommu.dirty import (
    BatchedDirtyBitmap,
    CheckedIovaBitmap,
    IommuDirtyBitmap,
    IovaBitmap,
    UserIovaBitmap,
)
from iommulab.iommu.gather import IommuIotlbGather


def _bitmap(kind: str, iova: int, length: int, ps: int) -> IovaBitmap:
    if kind == "checked":
        return CheckedIovaBitmap(iova, length, ps)
    if kind == "user":
        return UserIovaBitmap(iova, length, ps, 0x7000_0000 + 8 * random.Random(iova).randrange(3))
    return IovaBitmap(iova, length, ps)


@pytest.mark.parametrize("seed", range(150))
def test_batched_records_set_what_single_records_set(seed: int) -> None:
    rng = random.Random(seed)
    kind = rng.choice(("plain", "checked", "user"))
    ps = rng.choice((4096, 8192, 1 << 21))
    iova = rng.randrange(0, 1 << 30, 4096)
    length = rng.randrange(1, 64) * ps
    ops = []
    for _ in range(rng.randrange(1, 40)):
        size = rng.choice((2048, 4096, 1 << 21, 1 << 30))
        n = rng.randrange(1, 600)
        start = iova + rng.randrange(-4, 40) * 4096
        start -= start % min(size, 1 << 21)
        hit = np.array([rng.random() < rng.choice((0.01, 0.3, 1.0)) for _ in range(n)])
        ops.append(("run", start, size, hit) if rng.random() < 0.9 else
                   ("one", start, size, hit))
    results = []
    for cls in (IommuDirtyBitmap, BatchedDirtyBitmap):
        bitmap = _bitmap(kind, iova, length, ps)
        gather = IommuIotlbGather()
        dirty = BatchedDirtyBitmap(bitmap, gather, batch=rng.randrange(1, 5)) \
            if cls is BatchedDirtyBitmap else IommuDirtyBitmap(bitmap, gather)
        for op, start, size, hit in ops:
            if op == "run":
                dirty.record_run(start, size, hit)
            else:
                dirty.record(start, size)
        if isinstance(dirty, BatchedDirtyBitmap):
            dirty.flush()
        results.append((bitmap.words(), getattr(bitmap, "refused", None), gather.start,
                        gather.end))
    assert results[0] == results[1]
