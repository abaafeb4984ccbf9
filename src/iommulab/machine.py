"""A machine with an IOMMU, PCI devices and processes that open, mmap and ioctl as on Linux.

``Machine(platform)`` builds physical memory, the platform's IOMMU (hardware
model and driver) and the IOMMU core; ``add_pci_device`` puts a device in
its own group; ``spawn_process`` gives a process with its own address space,
memlock limit and file table. ``Process.ioctl`` follows ``fcntl.ioctl``: the
argument is an int, or a bytes/bytearray standing for the user memory at the
argument pointer (a bytearray is written back in place); failure raises
``OSError`` with the kernel's errno. :class:`Process` and the device files
behind ``/dev/iommu`` and ``/dev/vfio`` are the syscall layer's
(:mod:`iommulab.syscall`), which the front ends register into; this module imports
none of them.
"""

from __future__ import annotations

import itertools
from typing import Any

from .clock import Clock
from .devices import DmaDevice
from .edu import EDU_BAR0_SIZE, EDU_IDENTITY, EduDevice
from .errors import KernelError
from .hostirq import HostMsi
from .iommu import IommuCore
from .iommufd.cache_flush import CacheFlush
from .iommufd.pages import TEMP_MEMORY_LIMIT, UserStruct
from .kernel import DEFAULT_KERNEL, KernelVersion
from .mem import PhysMem
from .mem.cpu_cache import CpuCache
from .pcidev import GENERIC_IDENTITY, PciDevice
from .sizes import SZ_1M, parse_size
from .syscall.process import RLIMIT_NOFILE_DEFAULT, Process

__all__ = ["DEVICE_MODELS", "GENERIC_IDENTITY", "PLATFORMS", "Machine", "PciDevice", "Process"]

#: The one driver with ``driver_managed_dma``: it takes no DMA API ownership at probe
#: (``iommu_device_use_default_domain``); its users claim the group instead.
VFIO_PCI = "vfio-pci"

#: name -> (RAM base, first BAR address, IOMMU core strict)
PLATFORMS = {
    "x86-vtd": (0x1_0000_0000, 0xE000_0000, False),
    "arm64-smmuv3": (0x4000_0000, 0x1000_0000, True),
    "mock": (0x4000_0000, 0x1000_0000, True),
    "ppc64-pseries": (0, 0x2000_8000_0000, True),  # QEMU spapr: RAM at 0, MMIO32 window
}


#: the device models ``add_pci_device(model=...)`` knows
DEVICE_MODELS = ("edu",)


class Machine:
    """One machine: ``platform`` is ``"x86-vtd"``, ``"arm64-smmuv3"``, ``"mock"`` (the
    iommufd selftest's mock IOMMU, aperture [1 << 24, (1 << 31) - 1]: 6.12's 2K IO pages,
    7.0's generic_pt AMDv1 table with every power of two from 2K) or
    ``"ppc64-pseries"`` (a PAPR guest: each device in its own PE behind its own PHB, DMA
    through TCE tables and DDW; :attr:`pseries` and :attr:`dma` are its DMA code, and
    there is no IOMMU core, VFIO or iommufd on it). ``vtd_scalable`` (x86-vtd) puts a
    nesting-capable scalable-mode unit (:func:`~.drivers.vtd.nesting_unit`) in place of
    QEMU's legacy-mode one."""

    def __init__(self, platform: str = "x86-vtd", ram: int | str = "4G", seed: int = 0, *,
                 kernel: KernelVersion | str = DEFAULT_KERNEL, vtd_scalable: bool = False
                 ) -> None:
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r} (available: {sorted(PLATFORMS)})")
        ram_base, self._next_bar, strict = PLATFORMS[platform]
        self.platform = platform
        #: The Linux release the machine answers as (:mod:`iommulab.kernel`).
        self.kernel = KernelVersion.parse(kernel)
        self.seed = seed
        self.mem = PhysMem(ram, ram_base=ram_base)
        # the mock platform is a CONFIG_IOMMUFD_TEST kernel: iommufd_should_fail() points
        self.mem.fail_nth.iommufd_test = platform == "mock"
        self.clock = Clock()
        self.module_params: dict[str, int] = {
            "vfio_iommu_type1.dma_entry_limit": 65535,
            "vfio_iommu_type1.disable_hugepages": 0,
            "vfio_iommu_type1.allow_unsafe_interrupts": 0,
        }
        # Lab: the switch over every device's bar_mmap_supported (vfio_pci_probe_mmaps):
        # off as on a host without CONFIG_VFIO_PCI_MMAP. Each device has its own answer
        # too (PciDevice.bar0_mmap), which iommulab exec clears for a BAR of registers
        self.vfio_bar_mmap = True
        # CONFIG_IOMMUFD_VFIO_CONTAINER: /dev/vfio/vfio is iommufd's compatibility
        # container instead of the VFIO type1 one
        self.kconfig: dict[str, bool] = {"CONFIG_IOMMUFD_VFIO_CONTAINER": False}
        # lab: iommufd's CPU cache flushes for non-coherent domains (none: mainline)
        self.cache_flush = CacheFlush(self.mem)
        self.translator: Any
        self.driver: Any
        self.pseries: Any = None
        self.dma: Any = None
        if platform == "ppc64-pseries":
            from .drivers.pseries import PseriesDma, PseriesIommu
            self.pseries = PseriesIommu(self.mem, kernel=self.kernel)
            self.dma = PseriesDma(self.pseries)
            self.translator = self.driver = None
        elif platform == "x86-vtd":
            from .drivers.vtd import IntelIommu, VtdHw, nesting_unit
            # vtd_scalable: a nesting-capable scalable-mode unit instead of QEMU's legacy one
            self.translator = nesting_unit(self.mem) if vtd_scalable else VtdHw(self.mem)
            self.driver = IntelIommu(self.translator, kernel=self.kernel)
        elif platform == "mock":
            from .drivers.mock import MockHw, MockIommu
            self.translator = MockHw(self.mem.fail_nth)
            self.driver = MockIommu(self.translator, kernel=self.kernel, mem=self.mem)
        else:
            from .drivers.smmuv3 import ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
            self.translator = SmmuV3Hw(self.mem, SmmuV3Config())
            self.driver = ArmSmmuDevice(self.translator, kernel=self.kernel)
        self.core: Any = None if self.pseries else IommuCore(self.driver, clock=self.clock,
                                                             strict=strict)
        self.devices: dict[str, PciDevice] = {}
        self.open_groups: set[int] = set()  # groups with an open /dev/vfio/N
        # bdf -> struct vfio_device, once opened (VFIO's: typed by syscall.host.Host)
        self.vfio_devices: dict[str, Any] = {}
        self.users: dict[int, UserStruct] = {}  # uid -> user_struct (locked_vm)
        self.iommufd_test_memory_limit = [TEMP_MEMORY_LIMIT]  # selftest-tunable, global
        #: Lab: the granule iommufd's SET_DIRTY_TRACKING splits blocks to (None: upstream).
        self.dirty_granule: int | None = None
        self._mock_sids = itertools.count(0x1000)
        self.host_msi = HostMsi(self)

    def __repr__(self) -> str:
        return (f"<Machine {self.platform} ram={self.mem.ram_bytes:#x} seed={self.seed} "
                f"kernel={self.kernel}>")

    @property
    def faults(self) -> list[Any]:
        """The platform's fault records (VT-d fault log, SMMUv3 event queue, or the lab's
        record of the mock's untranslated accesses)."""
        if self.platform == "x86-vtd":
            return [f for unit in self.driver.units for f in unit.faults]
        if self.platform == "mock":
            return list(self.translator.faults)
        if self.pseries is not None:
            return [f for d in self.devices.values()
                    for f in self.pseries.devs[d.sid].pdn.phb.faults]
        self.driver.handle_events()
        return list(self.driver.events)

    def add_iommu_unit(self, *, aw: int = 39, snoop_control: bool = False,
                       sagaw: int = 0, scalable: bool = False) -> int:
        """x86-vtd: another DMAR unit; returns its number for ``add_pci_device(...,
        iommu_unit=)``. ``aw`` is MGAW (13-64 bits), ``sagaw`` the CAP.SAGAW table depths
        (bit 1: 3 levels, 2: 4, 3: 5; 0 means every depth up to the one ``aw`` needs, as
        QEMU reports for 39 and 48), ``snoop_control`` ECAP.SC. Unit 0 is QEMU's: 39
        bits, 3 levels, no SC. ValueError for a unit the kernel would ignore."""
        if self.platform != "x86-vtd":
            raise ValueError(f"{self.platform}: only x86-vtd machines have several units")
        from .drivers.vtd import VtdHw, nesting_unit
        # scalable: a nesting-capable scalable-mode unit (drivers.vtd.nesting_unit)
        unit = nesting_unit(self.mem, aw=aw, sagaw=sagaw, snoop_control=snoop_control) \
            if scalable else VtdHw(self.mem, aw, snoop_control, sagaw=sagaw)
        self.driver.units.append(unit)
        return len(self.driver.units) - 1

    def add_pci_device(self, bdf: str, driver: str = "vfio-pci",
                       bar0_size: int | str = SZ_1M, *, iommu_unit: int = 0,
                       snoop: bool = True, ddw: Any = None,
                       model: str | None = None) -> PciDevice:
        """A device at ``bdf`` alone in a new IOMMU group, BAR 0 in the MMIO window, behind
        DMAR unit ``iommu_unit`` (x86-vtd). A device that does not ``snoop`` (PCIe No
        Snoop) turns on the CPU cache model (:meth:`enable_cpu_cache`). On ppc64-pseries
        the device gets its own PHB offering ``ddw`` (a :class:`~.drivers.pseries.DdwOffer`;
        default QEMU's). ``model="edu"`` makes it QEMU's edu device (:mod:`iommulab.edu`,
        BAR 0 of 1 MiB); without a model it is a plain DMA device whose BAR 0 is memory."""
        if bdf in self.devices:
            raise ValueError(f"{bdf} is already on the bus")
        if model is not None and model not in DEVICE_MODELS:
            raise ValueError(f"unknown device model {model!r} (available: {DEVICE_MODELS})")
        if model == "edu" and parse_size(bar0_size) != EDU_BAR0_SIZE:
            raise ValueError(f"edu's BAR 0 is 1 MiB, not {bar0_size!r}")
        if self.pseries is not None:
            return self._add_pseries_device(bdf, driver, bar0_size, ddw, model)
        if ddw is not None:
            raise ValueError(f"{self.platform}: ddw= is for ppc64-pseries devices")
        translator = self.translator
        if iommu_unit:
            units = self.driver.units if self.platform == "x86-vtd" else [translator]
            if not 0 <= iommu_unit < len(units):
                raise ValueError(f"iommu_unit {iommu_unit}: the machine has {len(units)}")
            translator = units[iommu_unit]
        bar, size = self._place_bar0(bdf, bar0_size)
        dev = self._pci_device(bdf, driver, bar, size, translator, model)
        dev.snoop = snoop
        if not snoop:
            self.enable_cpu_cache()
        if translator is not self.translator:
            self.driver.unit_of[dev.sid] = translator
        self.core.probe_device(dev)
        if driver != VFIO_PCI:  # a kernel driver: DMA through the DMA API
            self.core.device_use_default_domain(dev)
        self.devices[bdf] = dev
        return dev

    def _place_bar0(self, bdf: str, bar0_size: int | str) -> tuple[int, int]:
        """BAR 0 of ``bdf``: naturally aligned at the next free MMIO address."""
        size = parse_size(bar0_size)
        if size < 4096 or size & (size - 1):
            raise ValueError(f"bar0_size {size:#x} must be a power of two of at least 4K")
        bar = -(-self._next_bar // size) * size
        self.mem.add_mmio(bar, size, f"{bdf} BAR0")
        self._next_bar = bar + size
        return bar, size

    def _pci_device(self, bdf: str, driver: str, bar: int, size: int, translator: Any,
                    model: str | None) -> PciDevice:
        """The function, its registers behind BAR 0 for a ``model``, its MSI path."""
        dev = PciDevice(self, bdf, driver, bar, size, translator,
                        EDU_IDENTITY if model == "edu" else GENERIC_IDENTITY)
        if model == "edu":
            edu = dev.model = EduDevice(dev, dev.fn)
            self.mem.set_mmio_ops(bar, edu.mmio_read, edu.mmio_write)
        dev.fn.msi_sink = self.host_msi.sink(dev)
        return dev

    def _add_pseries_device(self, bdf: str, driver: str, bar0_size: int | str,
                            offer: Any, model: str | None) -> PciDevice:
        from .drivers.pseries import SpaprPhb
        bar, size = self._place_bar0(bdf, bar0_size)
        phb = SpaprPhb(self.mem, offer, buid=0x800000020000000 + len(self.devices),
                       liobn_base=0x80000000 + 0x100 * len(self.devices))
        dev = self._pci_device(bdf, driver, bar, size, phb, model)
        self.pseries.probe(dev, phb)
        self.devices[bdf] = dev
        return dev

    def enable_cpu_cache(self, capacity: int | str = "32M") -> CpuCache:
        """Model the CPU cache as non-snooping DMA sees it (:mod:`iommulab.mem.cpu_cache`);
        once on, it stays on."""
        if self.mem.cpu_cache is None:
            self.mem.cpu_cache = CpuCache(self.mem, capacity)
        return self.mem.cpu_cache

    def group_devices(self, group: int) -> list[PciDevice]:
        return [d for d in self.devices.values() if d.iommu_group == group]

    def add_mock_device(self, flags: int = 0) -> DmaDevice:
        """mock: a selftest device (``MOCK_FLAGS_DEVICE_*``) in a new group, as
        IOMMU_TEST_OP_MOCK_DOMAIN creates; :meth:`remove_device` takes it away."""
        if self.platform != "mock":
            raise ValueError(f"{self.platform}: mock devices are for the mock platform")
        sid = next(self._mock_sids)
        self.driver.device_flags[sid] = flags
        dev = DmaDevice(f"mock{sid:#x}", self.mem, self.translator, sid)
        try:
            self.core.probe_device(dev)
        except KernelError:
            self.driver.device_flags.pop(sid, None)  # device_add failed: mock_dev freed
            raise
        return dev

    def remove_device(self, dev: DmaDevice) -> None:
        """Hot-unplug: ``iommu_release_device`` (pSeries: the PE's tables)."""
        if self.pseries is not None:
            self.pseries.release(dev)
        else:
            if getattr(dev, "driver", VFIO_PCI) != VFIO_PCI:  # the driver unbinds first
                self.core.device_unuse_default_domain(dev)
            self.core.release_device(dev)
        self.devices.pop(getattr(dev, "bdf", ""), None)
        self.vfio_devices.pop(getattr(dev, "bdf", ""), None)

    def spawn_process(self, memlock_limit: int | str | None = None,
                      cap_ipc_lock: bool = False, *, uid: int = 1000,
                      cap_sys_resource: bool = False,
                      nofile_limit: int = RLIMIT_NOFILE_DEFAULT) -> Process:
        """A process of user ``uid`` (processes of one uid share its ``locked_vm``) with
        RLIMIT_MEMLOCK ``memlock_limit`` and RLIMIT_NOFILE ``nofile_limit``."""
        limit = None if memlock_limit is None else parse_size(memlock_limit)
        return Process(self, limit, cap_ipc_lock, uid, cap_sys_resource, nofile_limit)
