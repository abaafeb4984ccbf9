"""An SMMUv3 machine with the IOMMU core, DMA API devices and an ITS, for DMA tests.

``close()`` releases the devices and buffers and checks nothing is left:
no frames, no table pages, no domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iommulab.clock import Clock
from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from iommulab.iommu import IommuCore, ResvRegion
from iommulab.irqchip import GicV3Its
from iommulab.kernel import KernelVersion
from iommulab.mem import PhysMem

from ..drivers.smmuv3.platform import check_no_leaks


@dataclass
class DmaPlatform:
    mem: PhysMem
    hw: SmmuV3Hw
    smmu: ArmSmmuDevice
    core: IommuCore
    its: GicV3Its
    devices: list[DmaDevice] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)

    @property
    def clock(self) -> Clock:
        return self.core.clock

    def device(self, sid: int = 0x10, name: str = "dev", *, resv: list[ResvRegion] | None = None,
               probe: bool = True, **kw: Any) -> DmaDevice:
        dev = DmaDevice(name, self.mem, self.hw, sid, **kw)
        dev.firmware_resv = list(resv or [])
        self.devices.append(dev)
        if probe:
            self.core.probe_device(dev)
        return dev

    def page(self, fill: bytes = b"") -> int:
        """A 4K page of RAM, optionally filled with a repeated pattern."""
        pa = self.mem.alloc_pages(0) << 12
        self.pages.append(pa)
        if fill:
            self.mem.write(pa, (fill * (4096 // len(fill) + 1))[:4096])
        return pa

    def close(self) -> None:
        for dev in self.devices:
            self.core.release_device(dev)
        assert not self.core.groups, f"groups left: {self.core.groups}"
        self.smmu.remove()
        for pa in self.pages:
            self.mem.free_pages(pa >> 12, 0)
        check_no_leaks(self.mem)


def make_dma_platform(*, strict: bool, ncpus: int = 1, ram: str = "4G", kernel: str = "6.12",
                      **config: Any) -> DmaPlatform:
    mem = PhysMem(ram)
    hw = SmmuV3Hw(mem, SmmuV3Config(**config))
    smmu = ArmSmmuDevice(hw, kernel=KernelVersion.parse(kernel))
    core = IommuCore(smmu, clock=Clock(hz=250), ncpus=ncpus, strict=strict)
    return DmaPlatform(mem, hw, smmu, core, GicV3Its(mem))
