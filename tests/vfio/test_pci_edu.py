"""A VMM driving QEMU's edu device through vfio-pci, as a VMM's own code would: container,
group, type1v2, MAP_DMA, the device fd's info ioctls, config space and BAR 0 through
pread/pwrite at the region offsets, interrupts into eventfds, DMA through the IOMMU."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab import Machine
from iommulab.iommu import MSI_IOVA_BASE
from iommulab.iommufd import uapi as iu
from iommulab.testing import check_invariants, leak_snapshot
from iommulab.vfio import uapi as u

from ..helpers import expect_errno

BDF = "0000:00:02.0"
IOVA = 0x10_0000  # below edu's 28-bit DMA mask
CFG = u.VFIO_PCI_CONFIG_REGION_INDEX << u.VFIO_PCI_OFFSET_SHIFT
BAR0 = u.VFIO_PCI_BAR0_REGION_INDEX << u.VFIO_PCI_OFFSET_SHIFT
TRIGGER_EVENTFD = u.VFIO_IRQ_SET_DATA_EVENTFD | u.VFIO_IRQ_SET_ACTION_TRIGGER


class EduVmm:
    """One process with a type1v2 container holding edu's group, 64K of its RAM mapped
    at IOVA, and edu's device fd."""

    def __init__(self, platform: str) -> None:
        self.m = Machine(platform, ram="1G")
        self.dev = self.m.add_pci_device(BDF, model="edu")
        self.fresh = leak_snapshot(self.m)
        p = self.p = self.m.spawn_process(memlock_limit=None)
        self.c = p.open("/dev/vfio/vfio")
        self.g = p.open(f"/dev/vfio/{self.dev.iommu_group}")
        p.ioctl(self.g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", self.c)))
        p.ioctl(self.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
        self.ram = p.mmap(1 << 16, "anon")
        p.ioctl(self.c, u.VFIO_IOMMU_MAP_DMA,
                bytearray(u.DMA_MAP.pack(32, 3, self.ram, IOVA, 1 << 16)))
        self.d = p.ioctl(self.g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))

    def cfg(self, off: int, size: int) -> int:
        return int.from_bytes(self.p.pread(self.d, size, CFG + off), "little")

    def set_cfg(self, off: int, size: int, value: int) -> None:
        assert self.p.pwrite(self.d, value.to_bytes(size, "little"), CFG + off) == size

    def reg(self, off: int, size: int = 4) -> int:
        return int.from_bytes(self.p.pread(self.d, size, BAR0 + off), "little")

    def set_reg(self, off: int, value: int, size: int = 4) -> None:
        assert self.p.pwrite(self.d, value.to_bytes(size, "little"), BAR0 + off) == size

    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes = b""
                 ) -> int:
        arg = bytearray(u.IRQ_SET.pack(u.IRQ_SET.size + len(data), flags, index, start,
                                       count) + data)
        return self.p.ioctl(self.d, u.VFIO_DEVICE_SET_IRQS, arg)

    def irq_info(self, index: int) -> tuple[int, int]:
        buf = bytearray(u.IRQ_INFO.pack(16, 0, index, 0))
        self.p.ioctl(self.d, u.VFIO_DEVICE_GET_IRQ_INFO, buf)
        _, flags, _, count = u.IRQ_INFO.unpack(buf)
        return flags, count

    def count(self, efd: int) -> int:
        """The eventfd's counter, read (and so reset) as a VMM's poll loop would."""
        try:
            return int.from_bytes(self.p.read_fd(efd, 8), "little")
        except OSError as err:
            assert err.errno == errno.EAGAIN
            return 0

    def dma(self, src: int, dst: int, cnt: int, to_ram: bool) -> None:
        """Program edu's engine and start it with the completion interrupt."""
        self.set_reg(0x80, src, 8)
        self.set_reg(0x88, dst, 8)
        self.set_reg(0x90, cnt, 8)
        self.set_reg(0x98, 1 | (2 if to_ram else 0) | 4, 8)

    def close(self) -> None:
        check_invariants([self.m, self.p])
        self.p.exit()
        check_invariants([self.m, self.p])
        assert not (diff := self.fresh.diff(leak_snapshot(self.m, processes=[self.p]))), diff


def fault_address(m: Machine) -> int:
    """The input address of the platform's last fault record."""
    fault = m.faults[-1]
    return int(fault.addr if m.platform == "x86-vtd" else fault.iova)


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_vmm_drives_edu_dma_and_msi_through_the_iommu(platform: str) -> None:
    v = EduVmm(platform)
    p, d = v.p, v.d
    buf = bytearray(u.DEVICE_INFO.pack(24, 0, 0, 0, 0, 0))
    p.ioctl(d, u.VFIO_DEVICE_GET_INFO, buf)
    info = u.DEVICE_INFO.unpack(buf)
    # edu is conventional PCI on the root bus: no FLR, no PM reset, no bus reset
    assert info[1:4] == (u.VFIO_DEVICE_FLAGS_PCI, u.VFIO_PCI_NUM_REGIONS, u.VFIO_PCI_NUM_IRQS)
    region = bytearray(u.REGION_INFO.pack(32, 0, u.VFIO_PCI_CONFIG_REGION_INDEX, 0, 0, 0))
    p.ioctl(d, u.VFIO_DEVICE_GET_REGION_INFO, region)
    assert u.REGION_INFO.unpack(region)[4:] == (256, CFG)
    assert v.irq_info(u.VFIO_PCI_INTX_IRQ_INDEX) == (
        u.VFIO_IRQ_INFO_EVENTFD | u.VFIO_IRQ_INFO_MASKABLE | u.VFIO_IRQ_INFO_AUTOMASKED, 1)
    norsz = u.VFIO_IRQ_INFO_EVENTFD | u.VFIO_IRQ_INFO_NORESIZE
    assert v.irq_info(u.VFIO_PCI_MSI_IRQ_INDEX) == (norsz, 1)
    assert v.irq_info(u.VFIO_PCI_MSIX_IRQ_INDEX) == (norsz, 0)
    assert v.irq_info(u.VFIO_PCI_REQ_IRQ_INDEX) == (norsz, 1)
    expect_errno(errno.EINVAL, v.irq_info, u.VFIO_PCI_ERR_IRQ_INDEX)  # not PCIe

    # config space as vfio-pci virtualises it
    assert (v.cfg(0, 2), v.cfg(2, 2), v.cfg(8, 1), v.cfg(0x0A, 2)) == (0x1234, 0x11E8, 0x10, 0xFF)
    assert v.cfg(4, 2) == 0x2  # memory decoding on (pci_enable_device), bus master off
    assert v.cfg(6, 2) & 0x10 and v.cfg(0x34, 1) == 0x40  # one capability: MSI at 0x40
    assert (v.cfg(0x40, 1), v.cfg(0x41, 1), v.cfg(0x42, 2)) == (0x05, 0, 0x80)
    assert v.cfg(0x10, 4) == v.dev.bar0  # 32-bit non-prefetchable memory
    v.set_cfg(0x10, 4, 0xFFFF_FFFF)  # BAR sizing, answered by vfio_bar_fixup
    assert v.cfg(0x10, 4) == 0xFFF0_0000 and v.dev.fn.cfg_read(0x10, 4) == v.dev.bar0
    assert v.cfg(0x14, 4) == 0 and v.cfg(0x30, 4) == 0  # no other BAR, no ROM
    assert v.cfg(0x3D, 1) == 1  # INTA
    v.set_cfg(4, 2, 0x6)  # bus master on, as a driver does before DMA
    assert v.dev.fn.bus_master

    efd = p.eventfd()
    assert v.set_irqs(TRIGGER_EVENTFD, u.VFIO_PCI_MSI_IRQ_INDEX, 0, 1,
                      struct.pack("<i", efd)) == 0
    assert v.dev.fn.msi_enabled

    assert v.reg(0x00) == 0x010000ED
    v.set_reg(0x04, 0x1234_5678)
    assert v.reg(0x04) == 0xEDCB_A987
    v.set_reg(0x20, 0x80)  # interrupt when the factorial is done
    v.set_reg(0x08, 10)
    assert v.reg(0x08) == 3628800 and v.reg(0x24) == 0x1
    assert v.count(efd) == 1
    v.set_reg(0x64, 0x1)
    v.set_reg(0x20, 0)

    # RAM -> edu's buffer -> RAM, through the IOMMU both ways
    payload = bytes(range(256)) * 4
    p.write(v.ram + 0x100, payload)
    v.dma(IOVA + 0x100, 0x40000 + 0x80, len(payload), to_ram=False)
    assert v.reg(0x98, 8) & 1 == 0 and v.reg(0x24) == 0x100
    assert v.count(efd) == 1
    v.set_reg(0x64, 0x100)
    v.dma(0x40000 + 0x80, IOVA + 0x8000, len(payload), to_ram=True)
    assert p.read(v.ram + 0x8000, len(payload)) == payload
    assert v.count(efd) == 1 and v.count(efd) == 0
    v.set_reg(0x64, 0x100)
    if platform == "arm64-smmuv3":  # the ITS doorbell, mapped through the MSI cookie
        assert v.dev.fn.cfg_read(0x44, 4) & ~0xFFF == MSI_IOVA_BASE
        assert v.m.host_msi.its().interrupts[-2:] == [(v.dev.sid, 0)] * 2

    # an IOVA outside the mapping faults at the IOMMU and moves nothing
    faults = len(v.m.faults)
    v.dma(IOVA + (1 << 16), 0x40000, 64, to_ram=False)
    assert len(v.m.faults) == faults + 1 and fault_address(v.m) == IOVA + (1 << 16)
    assert v.dev.model is not None and v.dev.model.dma_faults == 1
    assert v.count(efd) == 1  # edu does not know: the engine still completes
    v.set_reg(0x64, 0x100)

    expect_errno(errno.EINVAL, p.ioctl, d, u.VFIO_DEVICE_RESET)  # reset_works is false
    assert v.set_irqs(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER,
                      u.VFIO_PCI_MSI_IRQ_INDEX, 0, 0) == 0
    assert not v.dev.fn.msi_enabled
    v.close()


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_intx_is_automasked_until_the_user_unmasks(platform: str) -> None:
    v = EduVmm(platform)
    efd = v.p.eventfd()
    v.set_irqs(TRIGGER_EVENTFD, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, struct.pack("<i", efd))
    fn = v.dev.fn
    v.set_reg(0x60, 0x8)  # raise: edu asserts INTA
    assert v.count(efd) == 1 and fn.command & 0x400  # masked at the device (DisINTx)
    v.set_reg(0x60, 0x10)  # still asserted, still masked: no new signal
    assert v.count(efd) == 0
    unmask = u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_UNMASK
    v.set_irqs(unmask, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)  # still pending: sent again
    assert v.count(efd) == 1 and fn.command & 0x400
    v.set_reg(0x64, 0x18)  # acknowledged: the line drops
    v.set_irqs(unmask, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
    assert v.count(efd) == 0 and not fn.command & 0x400
    v.set_cfg(4, 2, 0x402)  # the user's INTx disable masks (virq_disabled)
    v.set_reg(0x60, 0x1)
    assert v.count(efd) == 0
    v.set_cfg(4, 2, 0x2)  # cleared: unmask finds it pending, sends it, stays masked
    assert v.count(efd) == 1 and fn.command & 0x400
    v.set_reg(0x64, 0x1)
    v.set_irqs(unmask, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
    assert not fn.command & 0x400
    # an unmask eventfd (KVM's resamplefd): writing it unmasks
    resample = v.p.eventfd()
    v.set_irqs(u.VFIO_IRQ_SET_DATA_EVENTFD | u.VFIO_IRQ_SET_ACTION_UNMASK,
               u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, struct.pack("<i", resample))
    v.set_reg(0x60, 0x2)
    assert v.count(efd) == 1
    v.set_reg(0x64, 0x2)
    v.p.write_fd(resample, (1).to_bytes(8, "little"))
    assert not fn.command & 0x400 and v.count(resample) == 0
    v.set_reg(0x60, 0x2)
    assert v.count(efd) == 1
    v.close()


def test_generic_device_resets_and_its_bar_memory_reads_back() -> None:
    m = Machine("x86-vtd", ram="1G")
    dev = m.add_pci_device(BDF)
    fresh = leak_snapshot(m)
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    d = p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    buf = bytearray(u.DEVICE_INFO.pack(24, 0, 0, 0, 0, 0))
    p.ioctl(d, u.VFIO_DEVICE_GET_INFO, buf)
    assert u.DEVICE_INFO.unpack(buf)[1] == u.VFIO_DEVICE_FLAGS_PCI | u.VFIO_DEVICE_FLAGS_RESET
    vdev = m.vfio_devices[BDF]
    assert vdev.pci is not None
    resets = vdev.pci.resets
    assert p.pwrite(d, b"0123456789", BAR0 + 0x1003) == 10
    assert p.pread(d, 10, BAR0 + 0x1003) == b"0123456789"
    assert p.pread(d, 64, BAR0 + (1 << 20) - 4) == bytes(4)  # cut at the BAR's end
    p.pwrite(d, struct.pack("<H", 0x4), CFG + 4)  # memory decoding off
    expect_errno(errno.EIO, p.pread, d, 4, BAR0)
    p.pwrite(d, struct.pack("<H", 0x6), CFG + 4)
    assert p.ioctl(d, u.VFIO_DEVICE_RESET) == 0
    assert vdev.pci.resets == resets + 1 and dev.fn.command & 0x6 == 0x6  # state restored
    p.exit()
    assert not (diff := fresh.diff(leak_snapshot(m, processes=[p]))), diff


def test_eventfd_counts_like_eventfd2() -> None:
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    efd, sem = p.eventfd(), p.eventfd(3, semaphore=True)
    expect_errno(errno.EAGAIN, p.read_fd, efd, 8)
    expect_errno(errno.EINVAL, p.read_fd, efd, 7)
    assert p.write_fd(efd, (5).to_bytes(8, "little")) == 8
    p.write_fd(efd, (2).to_bytes(8, "little"))
    assert p.read_fd(efd, 8) == (7).to_bytes(8, "little")
    assert [p.read_fd(sem, 8) for _ in range(3)] == [(1).to_bytes(8, "little")] * 3
    expect_errno(errno.EAGAIN, p.read_fd, sem, 8)
    expect_errno(errno.EINVAL, p.write_fd, efd, b"\xff" * 8)
    expect_errno(errno.ESPIPE, p.pread, efd, 8, 0)
    expect_errno(errno.EINVAL, p.eventfd, 1 << 32)
    p.exit()


@pytest.mark.parametrize(("platform", "kernel"), [
    ("x86-vtd", "6.12"), ("arm64-smmuv3", "6.12"), ("arm64-smmuv3", "7.0")])
def test_bound_cdev_drives_edu_through_an_ioas(platform: str, kernel: str) -> None:
    """The same device through /dev/vfio/devices/vfio0 bound to an iommufd: the device
    ioctls, regions and interrupts are the device file's, whichever way it was opened.
    On arm64 the MSI doorbell is mapped at the start of the software MSI window of the
    HWPT's domain: by the MSI cookie iommufd gave it (6.12), or by ``iommufd_sw_msi``
    (7.0, which makes no cookie)."""
    m = Machine(platform, ram="1G", kernel=kernel)
    dev = m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    p = m.spawn_process()
    iommufd, cdev = p.open("/dev/iommu"), p.open("/dev/vfio/devices/vfio0")
    expect_errno(errno.EINVAL, p.pread, cdev, 4, CFG)  # not bound yet
    p.ioctl(cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
            bytearray(u.BIND_IOMMUFD.pack(16, 0, iommufd, 0)))
    alloc = bytearray(iu.IOAS_ALLOC.pack(12, 0, 0))
    p.ioctl(iommufd, iu.IOMMU_IOAS_ALLOC, alloc)
    ioas = iu.IOAS_ALLOC.unpack(alloc)[2]
    p.ioctl(cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            bytearray(u.ATTACH_IOMMUFD_PT.pack(16, 0, ioas, 0)))
    ram = p.mmap(1 << 16, "anon")
    p.ioctl(iommufd, iu.IOMMU_IOAS_MAP,
            bytearray(iu.IOAS_MAP.pack(40, 7, ioas, 0, ram, 1 << 16, IOVA)))
    assert int.from_bytes(p.pread(cdev, 4, CFG), "little") == 0x11E8_1234
    p.pwrite(cdev, struct.pack("<H", 0x6), CFG + 4)
    efd = p.eventfd()
    arg = bytearray(u.IRQ_SET.pack(24, TRIGGER_EVENTFD, u.VFIO_PCI_MSI_IRQ_INDEX, 0, 1) +
                    struct.pack("<i", efd))
    p.ioctl(cdev, u.VFIO_DEVICE_SET_IRQS, arg)
    assert dev.fn.msi_enabled and dev.fn.bus_master
    if platform == "arm64-smmuv3":
        assert dev.fn.cfg_read(0x44, 4) & ~0xFFF == MSI_IOVA_BASE
    p.write(ram, b"through an IOAS")
    p.pwrite(cdev, struct.pack("<QQQQ", IOVA, 0x40000, 15, 1 | 4), BAR0 + 0x80)
    p.pwrite(cdev, struct.pack("<QQQQ", 0x40000, IOVA + 0x100, 15, 1 | 2), BAR0 + 0x80)
    assert p.read(ram + 0x100, 15) == b"through an IOAS"
    assert p.read_fd(efd, 8) == (1).to_bytes(8, "little")  # only the first asked
    check_invariants([m, p])
    p.exit()
    check_invariants([m, p])
    assert not (diff := fresh.diff(leak_snapshot(m, processes=[p]))), diff


def test_mmapped_bar_reaches_edu_and_msi_takes_over_from_intx() -> None:
    """BAR 0 mmapped: each load and store is one access of edu's registers. A pending
    INTx is dropped when MSI is enabled (QEMU's msi_write_config deasserts it), and the
    next interrupt goes as an MSI."""
    v = EduVmm("arm64-smmuv3")
    p = v.p
    bar = p.mmap(1 << 20, fd=v.d, offset=BAR0, shared=True)
    assert p.read(bar, 4) == (0x010000ED).to_bytes(4, "little")
    p.write(bar + 4, (0xF0F0_0000).to_bytes(4, "little"))
    assert v.reg(4) == 0x0F0F_FFFF
    assert p.read(bar, 2) == b"\xff\xff"  # a 2-byte load: edu answers all ones
    intx, msi = p.eventfd(), p.eventfd()
    v.set_irqs(TRIGGER_EVENTFD, u.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, struct.pack("<i", intx))
    p.write(bar + 0x60, (0x1).to_bytes(4, "little"))
    assert v.count(intx) == 1 and v.dev.fn.intx_level
    v.set_irqs(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER,
               u.VFIO_PCI_INTX_IRQ_INDEX, 0, 0)  # INTx off, then MSI on
    v.set_irqs(TRIGGER_EVENTFD, u.VFIO_PCI_MSI_IRQ_INDEX, 0, 1, struct.pack("<i", msi))
    assert not v.dev.fn.intx_level and v.dev.model is not None and v.dev.model.irq_status
    p.write(bar + 0x60, (0x2).to_bytes(4, "little"))  # bus mastering off: no message
    assert v.count(msi) == 0 and v.dev.fn.msi_dropped == 1
    v.set_cfg(4, 2, 0x6)
    p.write(bar + 0x60, (0x2).to_bytes(4, "little"))
    assert v.count(msi) == 1 and v.count(intx) == 0
    p.munmap(bar, 1 << 20)
    v.close()


def test_a_replace_installs_the_doorbell_the_group_uses_in_the_new_hwpt() -> None:
    """Linux 7.0: the doorbell page ``iommufd_sw_msi`` mapped for edu's MSI is the
    context's (one IOVA for every domain) and the group's (``required_sw_msi``), so
    moving the device to another IOAS maps it in the new HWPT's domain at the same
    IOVA (``iommufd_group_setup_msi``) and the MSI still arrives, without a new
    SET_IRQS."""
    m = Machine("arm64-smmuv3", ram="1G", kernel="7.0")
    dev = m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    p = m.spawn_process()
    iommufd, cdev = p.open("/dev/iommu"), p.open("/dev/vfio/devices/vfio0")
    p.ioctl(cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
            bytearray(u.BIND_IOMMUFD.pack(16, 0, iommufd, 0)))
    ioases = []
    for _ in range(2):
        alloc = bytearray(iu.IOAS_ALLOC.pack(12, 0, 0))
        p.ioctl(iommufd, iu.IOMMU_IOAS_ALLOC, alloc)
        ioases.append(iu.IOAS_ALLOC.unpack(alloc)[2])

    def attach(ioas: int) -> None:
        p.ioctl(cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                bytearray(u.ATTACH_IOMMUFD_PT.pack(16, 0, ioas, 0)))
    attach(ioases[0])
    p.pwrite(cdev, struct.pack("<H", 0x6), CFG + 4)
    efd = p.eventfd()
    p.ioctl(cdev, u.VFIO_DEVICE_SET_IRQS, bytearray(
        u.IRQ_SET.pack(24, TRIGGER_EVENTFD, u.VFIO_PCI_MSI_IRQ_INDEX, 0, 1) +
        struct.pack("<i", efd)))
    assert dev.fn.cfg_read(0x44, 4) & ~0xFFF == MSI_IOVA_BASE
    attach(ioases[1])  # a replace: the new HWPT gets the doorbell page
    assert dev.group is not None and dev.group.domain is not None
    domain = dev.group.domain
    assert domain.iova_to_phys(MSI_IOVA_BASE) == m.host_msi.its().doorbell & ~0xFFF
    p.pwrite(cdev, struct.pack("<I", 1), BAR0 + 0x60)  # edu raises its interrupt
    assert p.read_fd(efd, 8) == (1).to_bytes(8, "little")
    check_invariants([m, p])
    p.exit()
    check_invariants([m, p])
    assert not (diff := fresh.diff(leak_snapshot(m, processes=[p]))), diff
