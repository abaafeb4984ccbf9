"""The DMA device: transfers split by leaf, nothing moved on a fault, no-IOMMU mode."""

from __future__ import annotations

import pytest

from iommulab.devices import DmaDevice
from iommulab.errors import DmaFault, InvalidArgument
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_4K

from .drivers.smmuv3.platform import RW, make_platform


def test_without_an_iommu_iova_is_pa() -> None:
    mem = PhysMem("1G")
    dev = DmaDevice("raw", mem, None, 0)
    dev.dma_write(0x4000_0ffe, b"abcd")  # crosses a page
    assert mem.read(0x4000_0ffe, 4) == b"abcd" and dev.dma_read(0x4000_0ffe, 4) == b"abcd"
    assert dev.dma_read(0x4000_0000, 0) == b"" and dev.stats.bytes_read == 4
    with pytest.raises(InvalidArgument, match="DMA of -1 bytes"):
        dev.dma_read(0x4000_0000, -1)


def test_a_transfer_is_translated_leaf_by_leaf_and_faults_whole() -> None:
    p = make_platform()
    master, dev = p.device()
    d = p.domain(master)
    a, b = p.buffer(SZ_4K, fill=False), p.buffer(SZ_4K, fill=False)
    d.map(0x10_0000, b, SZ_4K, RW)  # two pages, physically in reverse order
    d.map(0x10_1000, a, SZ_4K, RW)
    dev.dma_write(0x10_0ffc, b"12345678")
    assert p.mem.read(b + 0xffc, 4) == b"1234" and p.mem.read(a, 4) == b"5678"
    assert dev.dma_read(0x10_0ffc, 8) == b"12345678"
    assert dev.stats.translations == 4 and dev.stats.writes == 1
    with pytest.raises(DmaFault) as exc:  # the second page is fine, the third is not mapped
        dev.dma_write(0x10_1ffe, b"xyz")
    assert exc.value.iova == 0x10_2000 and exc.value.write
    assert p.mem.read(a + 0xffe, 2) == b"\0\0"  # nothing was written
    assert dev.stats.faults == 1 and dev.stats.bytes_written == 8
    p.close()


@pytest.mark.parametrize(("iova", "n"), [(-4096, 8), (1 << 70, 8), ((1 << 64) - 4, 8),
                                         (0x10_0000, -1)])
def test_a_dma_no_bus_can_carry_is_einval_before_any_translation(iova: int, n: int) -> None:
    """A device puts 64-bit addresses on the bus: a transfer with a negative length or
    outside 64 bits is refused (EINVAL) before the IOMMU is asked, on every platform
    (the SMMU's table walk used to overflow numpy on such an address)."""
    p = make_platform()
    _, dev = p.device()
    with pytest.raises(InvalidArgument, match="not a range of 64-bit bus addresses"):
        dev.dma_read(iova, n)
    if n >= 0:
        with pytest.raises(InvalidArgument):
            dev.dma_write(iova, b"x" * n)
    assert dev.stats.translations == 0 and dev.stats.faults == 0
    p.close()
