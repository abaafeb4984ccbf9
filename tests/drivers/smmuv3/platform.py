"""A small SMMUv3 platform for tests: memory, the hardware, the driver, devices.

``close()`` releases everything the test made and checks that no frame,
table page or driver structure is left behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iommulab import Prot
from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import (
    ArmSmmuDevice,
    ArmSmmuDomain,
    ArmSmmuMaster,
    SmmuV3Config,
    SmmuV3Hw,
)
from iommulab.kernel import KernelVersion
from iommulab.mem import PhysMem

RW = Prot.READ | Prot.WRITE


@dataclass
class Platform:
    mem: PhysMem
    hw: SmmuV3Hw
    smmu: ArmSmmuDevice
    masters: list[ArmSmmuMaster] = field(default_factory=list)
    domains: list[ArmSmmuDomain] = field(default_factory=list)
    buffers: list[tuple[int, int]] = field(default_factory=list)  # (pfn, order)

    def device(self, sid: int = 0x10, name: str = "dev") -> tuple[ArmSmmuMaster, DmaDevice]:
        master = self.smmu.probe_device(sid)
        self.masters.append(master)
        return master, DmaDevice(name, self.mem, self.hw, sid)

    def domain(self, master: ArmSmmuMaster, flags: int = 0, attach: bool = True
               ) -> ArmSmmuDomain:
        domain = self.smmu.domain_alloc_paging_flags(master, flags)
        self.domains.append(domain)
        if attach:
            self.smmu.attach_dev(domain, master)
        return domain

    def buffer(self, size: int, fill: bool = True) -> int:
        """Physically contiguous, naturally aligned RAM; each 4K page holds its own number."""
        order = (size >> 12).bit_length() - 1
        pfn = self.mem.alloc_pages(order)
        self.buffers.append((pfn, order))
        if fill:
            pages = np.arange(pfn, pfn + (1 << order), dtype="<u8")
            self.mem.write(pfn << 12, np.repeat(pages, 512).tobytes())
        return pfn << 12

    def close(self) -> None:
        for master in self.masters:
            self.smmu.release_device(master)
        for domain in self.domains:
            domain.free()
        self.smmu.remove()
        for pfn, order in self.buffers:
            self.mem.free_pages(pfn, order)
        check_no_leaks(self.mem)


def check_no_leaks(mem: PhysMem) -> None:
    """No table page and no frame is left allocated, and the memory model is consistent."""
    assert mem.iommu_pages == 0, f"{mem.iommu_pages} table pages leaked"
    assert mem.frames.allocated_blocks == 0, "frames leaked"
    mem._check()


def make_platform(*, kernel: str = "6.12", **config: Any) -> Platform:
    """A platform with ``ram`` (default "4G") and the SmmuV3Config fields given, whose
    driver answers as Linux ``kernel``."""
    mem = PhysMem(config.pop("ram", "4G"))
    hw = SmmuV3Hw(mem, SmmuV3Config(**config))
    return Platform(mem, hw, ArmSmmuDevice(hw, kernel=KernelVersion.parse(kernel)))


def page_word(pa: int) -> bytes:
    """What :meth:`Platform.buffer` wrote at the start of the page holding ``pa``."""
    return (pa >> 12).to_bytes(8, "little")


def commands(p: Platform) -> Counter[str]:
    """Commands the SMMU has consumed so far, by name."""
    return Counter(p.hw.stats.commands)


def command_delta(p: Platform, before: Counter[str]) -> dict[str, int]:
    """Commands consumed since ``before`` (a :func:`commands` count), by name."""
    return {k: v for k, v in (commands(p) - before).items() if v}
