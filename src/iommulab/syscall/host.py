"""What the syscall layer and the front ends see of the machine (lab).

:class:`~iommulab.machine.Machine` is the one implementation; the front ends (VFIO,
iommufd, the exec bridge) and :class:`.process.Process` type against this protocol so
that none of them imports :mod:`iommulab.machine`, and the machine imports none of
them: it is built first, the front ends register into :mod:`.devtable` apart from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..hostirq import HostMsi
    from ..iommufd.cache_flush import CacheFlush
    from ..iommufd.pages import UserStruct
    from ..kernel import KernelVersion
    from ..mem import PhysMem
    from ..pcidev import PciDevice
    from ..vfio.device import VfioDevice

__all__ = ["Host"]


class Host(Protocol):
    """The machine's state and calls the layer and the front ends use."""

    platform: str
    kernel: KernelVersion
    seed: int
    mem: PhysMem
    #: the IOMMU core (None on ppc64-pseries), its driver and the hardware model
    core: Any
    driver: Any
    translator: Any
    pseries: Any
    module_params: dict[str, int]
    kconfig: dict[str, bool]
    #: lab: the switch over every device's bar_mmap_supported (PciDevice.bar0_mmap)
    vfio_bar_mmap: bool
    cache_flush: CacheFlush
    devices: dict[str, PciDevice]
    #: groups with an open /dev/vfio/N (VFIO's)
    open_groups: set[int]
    #: bdf -> struct vfio_device, once opened (VFIO's)
    vfio_devices: dict[str, VfioDevice]
    #: uid -> user_struct (locked_vm)
    users: dict[int, UserStruct]
    iommufd_test_memory_limit: list[int]
    dirty_granule: int | None
    host_msi: HostMsi

    @property
    def faults(self) -> list[Any]: ...

    def group_devices(self, group: int) -> list[PciDevice]: ...

    def add_pci_device(self, bdf: str, driver: str = "vfio-pci",
                       bar0_size: int | str = ..., *, iommu_unit: int = 0,
                       snoop: bool = True, ddw: Any = None,
                       model: str | None = None) -> PciDevice: ...

    def add_mock_device(self, flags: int = 0) -> DmaDevice: ...

    def remove_device(self, dev: DmaDevice) -> None: ...
