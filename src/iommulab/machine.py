"""A machine with an IOMMU, PCI devices and processes that open, mmap and ioctl as on Linux.

``Machine(platform)`` builds physical memory, the platform's IOMMU (hardware
model and driver) and the IOMMU core; ``add_pci_device`` puts a device in
its own group; ``spawn_process`` gives a process with its own address space,
memlock limit and file table. ``Process.ioctl`` follows ``fcntl.ioctl``: the
argument is an int, or a bytes/bytearray standing for the user memory at the
argument pointer (a bytearray is written back in place); failure raises
``OSError`` with the kernel's errno. The VFIO files behind ``/dev/vfio`` are
in :mod:`iommulab.vfio.files`.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .devices import DmaDevice
from .edu import EDU_BAR0_SIZE, EDU_IDENTITY, EduDevice
from .errors import (
    BadFileDescriptor,
    InvalidArgument,
    KernelError,
    NoDevice,
    NoEntry,
    kernel_error,
)
from .hostirq import HostMsi
from .iommu import IommuCore
from .iommufd.cache_flush import CacheFlush
from .iommufd.pages import TEMP_MEMORY_LIMIT, UserStruct
from .kernel import DEFAULT_KERNEL, KernelVersion
from .mem import PhysMem
from .mem.cpu_cache import CpuCache
from .mem.fault import FailNth
from .mem.mm import MmStruct
from .pcihw import PciFunction, PciIdentity
from .sizes import SZ_1M, parse_size
from .vfio.files import fput, get_file

if TYPE_CHECKING:
    from .vfio.device import VfioDevice
    from .vfio.files import VfioFile

__all__ = ["DEVICE_MODELS", "GENERIC_IDENTITY", "PLATFORMS", "Machine", "PciDevice", "Process"]

#: The one driver with ``driver_managed_dma``: it takes no DMA API ownership at probe
#: (``iommu_device_use_default_domain``); its users claim the group instead.
VFIO_PCI = "vfio-pci"

#: RLIMIT_NOFILE's usual soft limit (INR_OPEN_CUR)
RLIMIT_NOFILE_DEFAULT = 1024
#: the fds of the ``fdtable`` embedded in ``files_struct`` (BITS_PER_LONG)
NR_OPEN_DEFAULT = 64

#: name -> (RAM base, first BAR address, IOMMU core strict)
PLATFORMS = {
    "x86-vtd": (0x1_0000_0000, 0xE000_0000, False),
    "arm64-smmuv3": (0x4000_0000, 0x1000_0000, True),
    "mock": (0x4000_0000, 0x1000_0000, True),
    "ppc64-pseries": (0, 0x2000_8000_0000, True),  # QEMU spapr: RAM at 0, MMIO32 window
}


#: Lab: the identity of the plain DMA device ``add_pci_device`` makes without a
#: ``model``: QEMU's pci-testdev IDs, no interrupt pin, no capability, and a working
#: function reset (so GET_INFO reports VFIO_DEVICE_FLAGS_RESET for it)
GENERIC_IDENTITY = PciIdentity(vendor=0x1B36, device=0x0005, class_code=0x00FF, reset=True)
#: the device models ``add_pci_device(model=...)`` knows
DEVICE_MODELS = ("edu",)


class PciDevice(DmaDevice):
    """A PCI function at ``bdf`` with BAR 0 (MMIO) and the driver bound to it; ``fn``
    is its config space and interrupt pins, ``model`` the registers behind BAR 0
    (None: plain memory)."""

    def __init__(self, machine: Machine, bdf: str, driver: str, bar0: int,
                 bar0_size: int, translator: Any, ident: PciIdentity = GENERIC_IDENTITY
                 ) -> None:
        bus, devfn = _parse_bdf(bdf)
        super().__init__(bdf, machine.mem, translator, (bus << 8) | devfn)
        self.bdf = bdf
        self.driver = driver
        self.bar0, self.bar0_size = bar0, bar0_size
        self.machine = machine
        self.fn = PciFunction(ident, bar0, bar0_size)
        self.model: EduDevice | None = None


#: MAX_RW_COUNT: the most one read or write moves (INT_MAX rounded down to a page)
MAX_RW_COUNT = ((1 << 31) - 1) & ~0xFFF


def _rw_count(n: int, pos: int) -> int:
    """``rw_verify_area`` and the cut to MAX_RW_COUNT: EINVAL for a count that is
    negative as an ssize_t or that takes the position past 2^63 - 1."""
    if n < 0 or n >= 1 << 63 or pos + n >= 1 << 63:
        raise InvalidArgument(f"read/write of {n} bytes at {pos:#x}: not a valid range")
    return min(n, MAX_RW_COUNT)


def _length_arg(size: int | str) -> int:
    """A length given as an int or a size string ("2M"); EINVAL for text that is none."""
    if isinstance(size, int):
        return size
    try:
        return parse_size(size)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


def _parse_bdf(bdf: str) -> tuple[int, int]:
    """``DDDD:BB:DD.F`` -> (bus, devfn); ValueError naming the text otherwise."""
    try:
        dom, bus, rest = bdf.split(":")
        dev, fn = rest.split(".")
        b, d, f = int(bus, 16), int(dev, 16), int(fn, 16)
        int(dom, 16)
    except ValueError:
        raise ValueError(f"bad PCI address {bdf!r} (want DDDD:BB:DD.F)") from None
    if b > 255 or d > 31 or f > 7:
        raise ValueError(f"bad PCI address {bdf!r}: bus, device or function out of range")
    return b, d << 3 | f


class Machine:
    """One machine: ``platform`` is ``"x86-vtd"``, ``"arm64-smmuv3"``, ``"mock"`` (the
    iommufd selftest's mock IOMMU, aperture [1 << 24, (1 << 31) - 1]: 6.12's 2K IO pages,
    7.0's generic_pt AMDv1 table with every power of two from 2K) or
    ``"ppc64-pseries"`` (a PAPR guest: each device in its own PE behind its own PHB, DMA
    through TCE tables and DDW; :attr:`pseries` and :attr:`dma` are its DMA code, and
    there is no IOMMU core, VFIO or iommufd on it)."""

    def __init__(self, platform: str = "x86-vtd", ram: int | str = "4G", seed: int = 0, *,
                 kernel: KernelVersion | str = DEFAULT_KERNEL) -> None:
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
        # vfio-pci's bar_mmap_supported for BAR 0 (vfio_pci_probe_mmaps). Lab: True as on
        # a host with a memory BAR of a page or more; iommulab exec clears it, since it
        # cannot give a program a faithful mapping of a BAR whose accesses have effects
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
            from .drivers.vtd import IntelIommu, VtdHw
            self.translator = VtdHw(self.mem)
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
        self.vfio_devices: dict[str, VfioDevice] = {}  # bdf -> struct vfio_device, once opened
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
                       sagaw: int = 0) -> int:
        """x86-vtd: another DMAR unit; returns its number for ``add_pci_device(...,
        iommu_unit=)``. ``aw`` is MGAW (13-64 bits), ``sagaw`` the CAP.SAGAW table depths
        (bit 1: 3 levels, 2: 4, 3: 5; 0 means every depth up to the one ``aw`` needs, as
        QEMU reports for 39 and 48), ``snoop_control`` ECAP.SC. Unit 0 is QEMU's: 39
        bits, 3 levels, no SC. ValueError for a unit the kernel would ignore."""
        if self.platform != "x86-vtd":
            raise ValueError(f"{self.platform}: only x86-vtd machines have several units")
        from .drivers.vtd import VtdHw
        self.driver.units.append(VtdHw(self.mem, aw, snoop_control, sagaw=sagaw))
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


def _alloc_fdtable(fail: FailNth, slots_wanted: int) -> int:
    """``alloc_fdtable``: a table of the smallest power of two of fds that gives
    ``slots_wanted``: the ``fdtable``, its array of files and its bitmaps (ENOMEM,
    nothing kept). Returns its size (``max_fds``)."""
    nr = 1 << (slots_wanted - 1).bit_length()
    fail.check("kmalloc(fdtable)")
    fail.kvmalloc("fdtable fd array", nr * 8)  # kvmalloc_array(nr, sizeof(struct file *))
    bitbit = -(-(nr // 64) // 64) * 8  # BITBIT_SIZE(nr)
    fail.kvmalloc("fdtable bitmaps", max(2 * nr // 8 + bitbit, 64))  # L1_CACHE_BYTES
    return nr


@dataclass
class Process:
    """A process: address space, RLIMIT_MEMLOCK (None: unlimited), CAP_IPC_LOCK, files
    (fewer than RLIMIT_NOFILE ``nofile_limit``)."""

    machine: Machine
    memlock_limit: int | None
    cap_ipc_lock: bool
    uid: int = 1000
    cap_sys_resource: bool = False
    nofile_limit: int = RLIMIT_NOFILE_DEFAULT
    mm: MmStruct = field(init=False)
    files: dict[int, VfioFile] = field(default_factory=dict, init=False)
    max_fds: int = field(default=NR_OPEN_DEFAULT, init=False)  # the fd table's size

    def __post_init__(self) -> None:
        self.mm = MmStruct(self.machine.mem, self.machine.kernel)

    @property
    def user(self) -> UserStruct:
        """``current_user()``: shared by every process of this uid."""
        return self.machine.users.setdefault(self.uid, UserStruct(self.uid))

    # -- memory ------------------------------------------------------------------------------------
    def mmap(self, length: int | str, backing: str = "anon", prot: str = "rw",
             populate: bool = False, fd: int | None = None, offset: int = 0, *,
             shared: bool = False, private: bool = False) -> int:
        """``mmap``: anonymous memory of ``backing`` (``shared``: MAP_SHARED | MAP_ANONYMOUS,
        shmem that a forked child shares), a memfd (MAP_SHARED, or MAP_PRIVATE with
        ``private``: copied on write) or a VFIO device region (``fd``). x86_64's
        ``sys_mmap`` first: EINVAL for an offset that is not whole pages, then EBADF for
        an fd that is not open; the rest is :meth:`MmStruct.mmap`'s (``do_mmap``): a file
        without ``mmap`` is ENODEV, and a device region wants MAP_SHARED (EINVAL,
        ``vfio_pci_core_mmap``)."""
        if prot not in ("rw", "r"):
            raise InvalidArgument(f"mmap: prot {prot!r} is not 'rw' or 'r'")
        if not -(1 << 63) <= offset < 1 << 64 or offset & 0xFFF:
            raise InvalidArgument(f"mmap: offset {offset:#x} is not a multiple of the page size")
        if fd is None:
            return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                                shared=shared, private=private)
        from .iommufd.file import MemFdFile
        f = self._file(fd)
        if isinstance(f, MemFdFile):
            return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                                file=f.memfd, offset=offset, private=private)

        def region(nbytes: int) -> int:
            return f.mmap_region(nbytes, offset, not private)  # ENODEV where none

        return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                            device=region, offset=offset)

    def memfd_create(self, name: str, size: int | str = 0, hugetlb: str | None = None) -> int:
        """``memfd_create`` (MFD_HUGETLB with ``hugetlb`` "2M" or "1G") and ``ftruncate``
        to ``size``: the fd. Nothing is allocated for the size. After the flags and the
        name are checked (EINVAL): the name's copy, the fd (EMFILE), then the shmem or
        hugetlbfs file (:func:`~.mem.memfd.file_setup`)."""
        from .iommufd.file import MemFdFile
        from .mem.memfd import MemFd, file_setup
        memfd = MemFd(self.machine.mem, name, _length_arg(size), hugetlb)
        fail = self.machine.mem.fail_nth
        fail.check("kmalloc(memfd_create name)")
        fd = self.get_unused_fd()
        file_setup(fail, hugetlb=memfd.order > 0)
        return self.fd_install(fd, MemFdFile(memfd))

    def ftruncate(self, fd: int, size: int | str) -> None:
        """``ftruncate``: EINVAL for a negative length, EBADF for an fd not open, EINVAL
        for a file that is not a memfd (``do_sys_ftruncate``)."""
        from .iommufd.file import MemFdFile
        length = _length_arg(size)
        if length < 0:
            raise InvalidArgument(f"ftruncate: length {length} is negative")
        f = self._file(fd)
        if not isinstance(f, MemFdFile):
            raise InvalidArgument(f"ftruncate: fd {fd} is not a memfd")
        f.memfd.ftruncate(length)

    def munmap(self, vaddr: int, length: int) -> None:
        self.mm.munmap(vaddr, length)

    def read(self, vaddr: int, n: int) -> bytes:
        return self.mm.read(vaddr, n)

    def write(self, vaddr: int, data: bytes | bytearray | memoryview) -> None:
        self.mm.write(vaddr, data)

    def clflush(self, vaddr: int, n: int) -> None:
        """``clflush`` over ``[vaddr, vaddr + n)``: what a driver for a device that does not
        snoop does around its DMA (lab: the CPU cache model)."""
        self.mm.clflush(vaddr, n)

    # -- files -------------------------------------------------------------------------------------
    def open(self, path: str) -> int:
        """``/dev/iommu``, ``/dev/vfio/vfio``, ``/dev/vfio/<group>``,
        ``/dev/vfio/devices/vfio<N>``. ``do_sys_openat2``'s order: the path's copy
        (``getname``: a names_cache allocation), the fd (EMFILE, before the path is
        looked at), the file (``alloc_empty_file`` in ``path_openat``, before it walks
        the path), then :meth:`open_file`; an allocation failing is ENOMEM with nothing
        done."""
        fail = self.machine.mem.fail_nth
        fail.check("getname(do_sys_openat2)")
        fd = self.get_unused_fd()
        fail.check("alloc_empty_file(path_openat)")
        return self.fd_install(fd, self.open_file(path))

    def open_file(self, path: str) -> VfioFile:
        """The lookup (ENOENT) and the device's ``open`` of ``path``: the new file, in no
        fd table yet (what follows the VFS's own allocations)."""
        from .vfio.files import open_vfio_path
        if self.machine.pseries is not None and path.startswith(("/dev/iommu", "/dev/vfio")):
            raise NoDevice(f"open: {path}: ppc64-pseries has no VFIO or iommufd in the model "
                           "(SPAPR TCE is not modelled)")
        if path == "/dev/iommu":
            from .iommufd.file import IommufdFile
            return IommufdFile(self.machine)
        if not path.startswith("/dev/vfio/"):
            raise NoEntry(f"open: {path}: No such file or directory")
        return open_vfio_path(self, path)

    def fget(self, fd: int) -> VfioFile | None:
        """``fdget``: the file at ``fd``, None when it is not open (a negative fd too)."""
        return self.files.get(fd)

    def get_unused_fd(self) -> int:
        """``get_unused_fd_flags`` (``alloc_fd``): the lowest free fd, which the caller
        then gives a file (:meth:`fd_install`). EMFILE when none is below RLIMIT_NOFILE;
        past the fd table, ``expand_files`` first makes a larger one (ENOMEM, the table
        as it was). O(files)."""
        fd = next(i for i in range(3, len(self.files) + 4) if i not in self.files)
        if fd >= self.nofile_limit:
            raise kernel_error(errno.EMFILE, f"no fd below RLIMIT_NOFILE "
                               f"({self.nofile_limit}): {len(self.files)} files open")
        if fd >= self.max_fds:
            self.max_fds = _alloc_fdtable(self.machine.mem.fail_nth, fd + 1)  # expand_fdtable
        return fd

    def fd_install(self, fd: int, f: VfioFile) -> int:
        """``fd_install``: ``f`` at ``fd`` (from :meth:`get_unused_fd`); returns ``fd``."""
        self.files[fd] = f
        return fd

    def install(self, f: VfioFile) -> int:
        """:meth:`get_unused_fd` + :meth:`fd_install` of a file already made, for the
        callers whose kernel path takes the fd after the file; when no fd can be had the
        caller's reference to the file is dropped, as its error path would (``fput``)."""
        try:
            fd = self.get_unused_fd()
        except KernelError:
            fput(f)
            raise
        return self.fd_install(fd, f)

    def close(self, fd: int) -> None:
        f = self._file(fd)
        del self.files[fd]
        fput(f)

    def eventfd(self, initval: int = 0, *, semaphore: bool = False) -> int:
        """``eventfd(initval, EFD_SEMAPHORE if semaphore)``: EINVAL for an initial value
        that is not an unsigned int. Read it with :meth:`read_fd` (lab: it never
        blocks, as with EFD_NONBLOCK: EAGAIN at zero)."""
        from .eventfd import EventFdFile
        if not 0 <= initval <= 0xFFFF_FFFF:
            raise InvalidArgument(f"eventfd: initval {initval} is not an unsigned int")
        return self.install(EventFdFile(initval, semaphore))

    def read_fd(self, fd: int, n: int) -> bytes:
        """``read(fd, buf, n)``: what the file gives (an eventfd its counter, a VFIO
        device fd the region at its file position); EINVAL for a negative ``n``, EBADF
        for an fd not open, EINVAL for a file with no read."""
        count = _rw_count(n, 0)
        return self._file(fd).read_fd(count)

    def write_fd(self, fd: int, data: bytes | bytearray) -> int:
        """``write(fd, data, len(data))``: the count written."""
        return self._file(fd).write_fd(bytes(data[:MAX_RW_COUNT]))

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """``pread64``: EINVAL for a negative ``offset`` (before the fd is looked up),
        EBADF for an fd not open, ESPIPE for a file without positional reads (an
        eventfd), EINVAL for one with no read or for ``offset + n`` past 2^63 - 1
        (``rw_verify_area``); ``n`` is cut to MAX_RW_COUNT. The bytes read (fewer at
        the end of a region)."""
        if offset < 0 or offset >= 1 << 63:
            raise InvalidArgument(f"pread: offset {offset:#x} is negative")
        f = self._file(fd)
        if not f.positional:
            raise kernel_error(errno.ESPIPE, f"pread: fd {fd} cannot seek")
        return f.pread(_rw_count(n, offset), offset)

    def pwrite(self, fd: int, data: bytes | bytearray, offset: int) -> int:
        """``pwrite64``: as :meth:`pread`; the count written."""
        if offset < 0 or offset >= 1 << 63:
            raise InvalidArgument(f"pwrite: offset {offset:#x} is negative")
        f = self._file(fd)
        if not f.positional:
            raise kernel_error(errno.ESPIPE, f"pwrite: fd {fd} cannot seek")
        count = _rw_count(len(data), offset)
        return f.pwrite(bytes(data[:count]), offset)

    def fork(self) -> Process:
        """``fork``: a child with the same credentials and limits, the same open files
        and the address space as ``dup_mmap`` gives it (:meth:`MmStruct.fork`: private
        memory shared until written, pages that may be pinned copied now).

        ``copy_process``'s allocations, in its order, where the model has what they
        hold: the task (``dup_task_struct``), its credentials (``copy_creds``), the file
        table (``dup_fd``, a larger fd table when the parent's open fds pass
        NR_OPEN_DEFAULT), the rlimits (``copy_signal``), the address space (``dup_mm``).
        ENOMEM undoes what was made: the child's file references are dropped and its
        half-built mm torn down (what the parent's pages keep from it:
        :meth:`MmStruct.fork`). Lab: the thread stack, fs_struct, sighand, page tables,
        maple tree nodes and the pid have no state in the model and are no points."""
        fail = self.machine.mem.fail_nth
        fail.check("alloc_task_struct_node(dup_task_struct)")
        fail.check("kmem_cache_alloc(cred_jar)")  # prepare_creds
        fail.check("kmem_cache_alloc(files_cachep)")  # dup_fd
        max_fds = NR_OPEN_DEFAULT
        open_files = (max(self.files) // NR_OPEN_DEFAULT + 1) * NR_OPEN_DEFAULT \
            if self.files else 0  # sane_fdtable_size: whole words of the open fds bitmap
        if open_files > max_fds:
            max_fds = _alloc_fdtable(fail, open_files)
        files = {fd: get_file(f) for fd, f in self.files.items()}
        try:
            fail.check("kmem_cache_alloc(signal_cachep)")  # copy_signal
            mm = self.mm.fork()
        except KernelError:
            for f in files.values():
                fput(f)
            raise
        child = Process(self.machine, self.memlock_limit, self.cap_ipc_lock, self.uid,
                        self.cap_sys_resource, self.nofile_limit)
        child.mm.close()  # lab: the empty mm Process made is replaced by the copy
        child.mm, child.files, child.max_fds = mm, files, max_fds
        return child

    def ioctl(self, fd: int, request: int, arg: int | bytes | bytearray = 0) -> int:
        """``ioctl(2)``: the return value, or OSError with the kernel's errno."""
        return self._file(fd).ioctl(self, request, arg)

    def exit(self) -> None:
        """Close every file, then drop the address space."""
        for fd in sorted(self.files):
            self.close(fd)
        self.mm.close()

    def _file(self, fd: int) -> VfioFile:
        f = self.files.get(fd)
        if f is None:
            raise BadFileDescriptor(f"fd {fd} is not open")
        return f
