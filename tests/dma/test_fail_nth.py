"""Fail every allocation in turn during probe, streaming, sg and coherent DMA: ENOMEM or a
mapping error, nothing half-done, nothing leaked (after iommufd_fail_nth)."""

from __future__ import annotations

import errno

from iommulab.dma import (
    DMA_MAPPING_ERROR,
    DmaDirection,
    Scatterlist,
    dma_alloc_coherent,
    dma_free_coherent,
    dma_map_page,
    dma_map_sg,
    dma_unmap_page,
    dma_unmap_sg,
    prepare_msi,
)

from .platform import make_dma_platform

TO_DEV = DmaDirection.TO_DEVICE


def _run(n: int) -> bool:
    p = make_dma_platform(strict=False)
    dev = p.device(probe=False)
    pages = [p.page(b"f") for _ in range(3)]
    fail = p.mem.fail_nth
    fail.arm(n)
    try:
        try:
            p.core.probe_device(dev)
        except OSError as e:
            assert e.errno == errno.ENOMEM
            assert dev.dev_iommu is None and not p.core.groups
            return fail.triggered
        a = dma_map_page(dev, pages[0], 64, TO_DEV)
        if a != DMA_MAPPING_ERROR:
            assert dev.dma_read(a, 1) == b"f"
            dma_unmap_page(dev, a, 64, TO_DEV)
        sg = [Scatterlist.at(pa, 0x1000) for pa in pages]
        if dma_map_sg(dev, sg, TO_DEV):
            assert dev.dma_read(sg[0].dma_address, 0x3000) == b"f" * 0x3000
            dma_unmap_sg(dev, sg, TO_DEV)
        else:
            assert all(s.dma_length == 0 for s in sg)
        buf = dma_alloc_coherent(dev, 0x3000)
        if buf is not None:
            dma_free_coherent(dev, buf)
        try:
            prepare_msi(dev, p.its.doorbell)
        except OSError as e:
            assert e.errno == errno.ENOMEM
        p.clock.advance(20_000_000)
        return fail.triggered
    finally:
        fail.disarm()
        p.close()


def test_fail_nth_sweep() -> None:
    n = 1
    while _run(n):
        n += 1
    assert n > 5  # the sweep did reach the allocation points
