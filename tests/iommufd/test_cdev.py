"""VFIO device cdevs bound to iommufd on the VT-d and SMMUv3 machines: bind, attach to an
IOAS (automatic HWPT) or a HWPT, replace, detach; device DMA through the IOAS; dirty
tracking through HWPT_SET_DIRTY_TRACKING / GET_DIRTY_BITMAP on the SMMUv3, with the lab's
split granule; two domains sharing one pin per page."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommulab import Machine
from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import regs
from iommulab.iommufd import uapi as u
from iommulab.vfio import uapi as v

from ..helpers import Host, assert_groups_released, expect_errno, make_host

SZ_2M = 2 << 20


@pytest.fixture(params=["x86-vtd", "arm64-smmuv3"])
def host(request: pytest.FixtureRequest) -> Iterator[tuple[Host, list[DmaDevice]]]:
    h, devs = make_host(request.param, 2)
    yield h, devs
    h.p.exit()
    assert h.m.mem.pins.pins == 0 and h.p.mm.pinned_vm == 0
    assert h.p.user.locked_vm == 0
    assert_groups_released(h.m)


def test_bind_attach_dma(host: tuple[Host, list[DmaDevice]]) -> None:
    h, (dev, _) = host
    cdev, _devid = h.bind(0)
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, v.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(v.BIND_IOMMUFD.pack(16, 0, h.iommufd, 0)))  # bound already
    ioas = h.ioas()
    hwpt = h.attach(cdev, ioas)  # an automatic HWPT
    buf = h.p.mmap(4 * SZ_2M, "thp", populate=True)
    iova = h.map(ioas, buf, 4 * SZ_2M)
    assert iova % SZ_2M == 0  # the automatic IOVA keeps the 2M alignment of the buffer
    dev.dma_write(iova + 5000, b"through iommufd")
    assert h.p.read(buf + 5000, 15) == b"through iommufd"
    assert h.p.mm.pinned_vm == 4 * 512 and h.p.user.locked_vm == 4 * 512  # USER mode
    expect_errno(errno.EBUSY, h.p.ioctl, h.iommufd, u.IOMMU_DESTROY,
                 bytearray(u.DESTROY.pack(8, hwpt)))
    h.ioctl(cdev, v.VFIO_DEVICE_DETACH_IOMMUFD_PT, v.DETACH_IOMMUFD_PT.pack(12, 0, 0))
    expect_errno(errno.ENOENT, h.p.ioctl, h.iommufd, u.IOMMU_DESTROY,
                 bytearray(u.DESTROY.pack(8, hwpt)))  # went with its last device
    with pytest.raises(OSError):
        dev.dma_read(iova, 4)  # blocked now
    assert h.p.mm.pinned_vm == 0  # no domain left: unpinned


def test_two_domains_one_pin(host: tuple[Host, list[DmaDevice]]) -> None:
    """Two devices on one IOAS each with their own HWPT: one pin per page, both map it."""
    h, (dev0, dev1) = host
    ioas = h.ioas()
    (c0, d0), (c1, d1) = h.bind(0), h.bind(1)
    h0, h1 = h.hwpt(d0, ioas), h.hwpt(d1, ioas)
    assert (h.attach(c0, h0), h.attach(c1, h1)) == (h0, h1)
    buf = h.p.mmap(SZ_2M, "thp", populate=True)
    iova = h.map(ioas, buf, SZ_2M)
    assert h.p.mm.pinned_vm == 512
    assert h.m.mem.pins.pins == 512  # pinned once for both domains
    dev0.dma_write(iova, b"zero")
    assert dev1.dma_read(iova, 4) == b"zero"
    for c in (c0, c1):
        h.p.close(c)
    h.p.ioctl(h.iommufd, u.IOMMU_DESTROY, bytearray(u.DESTROY.pack(8, h0)))
    assert h.m.mem.pins.pins == 512  # the other domain still holds them
    h.p.ioctl(h.iommufd, u.IOMMU_DESTROY, bytearray(u.DESTROY.pack(8, h1)))
    assert h.m.mem.pins.pins == 0


def test_memlock_limit_user_mode() -> None:
    h, _ = make_host("x86-vtd", 1)
    cdev, _ = h.bind(0)
    ioas = h.ioas()
    h.attach(cdev, ioas)
    buf = h.p.mmap(128 << 20, "anon", populate=True)
    expect_errno(errno.ENOMEM, h.map, ioas, buf, 128 << 20)  # 64M limit
    assert h.m.mem.pins.pins == 0 and h.p.user.locked_vm == 0
    h.map(ioas, buf, 64 << 20)
    assert h.p.user.locked_vm == (64 << 20) // 4096
    h.p.exit()
    assert h.m.mem.pins.pins == 0 and h.p.user.locked_vm == 0


@pytest.mark.parametrize("granule", [None, 4096])
def test_smmuv3_dirty_tracking(granule: int | None) -> None:
    h, (dev,) = make_host("arm64-smmuv3", 1)
    h.m.dirty_granule = granule
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    hwpt = h.hwpt(devid, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    h.attach(cdev, hwpt)
    buf = h.p.mmap(2 * SZ_2M, "thp", populate=True)
    iova = h.map(ioas, buf, 2 * SZ_2M)
    h.ioctl(h.iommufd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
            u.HWPT_SET_DIRTY_TRACKING.pack(16, 1, hwpt, 0))
    assert h.dirty_pages(hwpt, iova, 2 * SZ_2M) == []  # a clean snapshot
    dev.dma_write(iova + SZ_2M + 3 * 4096 + 7, b"!")
    want = [512 + 3] if granule else list(range(512, 1024))  # a 4K page, or the block
    assert h.dirty_pages(hwpt, iova, 2 * SZ_2M) == want
    assert h.dirty_pages(hwpt, iova, 2 * SZ_2M) == []
    h.ioctl(h.iommufd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
            u.HWPT_SET_DIRTY_TRACKING.pack(16, 0, hwpt, 0))
    h.p.exit()
    assert h.m.mem.pins.pins == 0


def test_cdev_refuses_before_bind_and_bad_fds() -> None:
    h, _ = make_host("x86-vtd", 1)
    cdev = h.p.open("/dev/vfio/devices/vfio0")
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 bytearray(v.ATTACH_IOMMUFD_PT.pack(16, 0, 1, 0)))
    expect_errno(errno.EBADF, h.p.ioctl, cdev, v.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(v.BIND_IOMMUFD.pack(16, 0, 99, 0)))
    expect_errno(77, h.p.ioctl, cdev, v.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(v.BIND_IOMMUFD.pack(16, 0, cdev, 0)))  # EBADFD: not iommufd
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, v.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(v.BIND_IOMMUFD.pack(16, 1, h.iommufd, 0)))  # flags
    expect_errno(errno.ENOENT, h.p.open, "/dev/vfio/devices/vfio7")
    h.p.exit()


def test_get_hw_info_smmuv3_registers() -> None:
    """GET_HW_INFO on the SMMUv3 (7.0, ``arm_smmu_hw_info``): struct iommu_hw_info_arm_smmuv3
    with the ID registers the hardware model exposes, truncated to data_len and zero-filled
    past the struct."""
    h, _ = make_host("arm64-smmuv3", 1, "7.0")
    cdev, devid = h.bind(0)
    data = h.p.mmap(4096)
    h.p.write(data, b"\xff" * 64)
    out = h.ioctl(h.iommufd, u.IOMMU_GET_HW_INFO,
                  u.HW_INFO.pack(40, 0, devid, 48, data, 0, 0, b"\0" * 3, 0))
    _, _, _, data_len, _, info_type, _, _, caps = u.HW_INFO.unpack(out)
    assert (info_type, data_len) == (u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 40)
    raw = h.p.read(data, 48)
    fields = u.HW_INFO_ARM_SMMUV3.unpack(raw[:40])
    hw = h.m.translator
    assert fields[2] == hw.read_reg(0) and fields[3] == hw.read_reg(4)  # IDR0, IDR1
    assert fields[4] == 0 and fields[5] == hw.read_reg(0xC)  # IDR2 (not modelled), IDR3
    assert fields[7] == hw.read_reg(0x14)  # IDR5
    assert raw[40:] == bytes(8)
    httu = regs.IDR0["HTTU"].get(fields[2])  # 2: access and dirty flag updates
    assert caps == (u.IOMMU_HW_CAP_DIRTY_TRACKING if httu == 2 else 0) \
        | u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED  # IDR0.ATS clear
    h.p.close(cdev)
    h.p.exit()


#: A QEMU 4.2 q35 guest with ``-device intel-iommu,intremap=on,caching-mode=on`` and
#: ``kernel-irqchip=split`` (so EIM is on) printed "DMAR: dmar0: reg_base_addr fed90000
#: ver 1:0 cap d2008c22260286 ecap f00f5a" (qemu-devel, 2020-10-07, "Re: Fwd: Enable IOMMU
#: Inside QEMU"). The driver reports these registers unchanged.
QEMU_INTREMAP_CAP, QEMU_INTREMAP_ECAP = 0xD2008C22260286, 0xF00F5A


def _vtd_hw_info(h: Host, devid: int, data_len: int, flags: int = 0,
                 in_type: int = 0) -> tuple[tuple[int, ...], bytes]:
    data = h.p.mmap(4096)
    h.p.write(data, b"\xff" * 64)
    out = h.ioctl(h.iommufd, u.IOMMU_GET_HW_INFO,
                  u.HW_INFO.pack(40, flags, devid, data_len, data, in_type, 0, b"\0" * 3, 0))
    return u.HW_INFO.unpack(out), h.p.read(data, 32)


def test_get_hw_info_vtd_registers_match_a_real_guest() -> None:
    """GET_HW_INFO on VT-d: struct iommu_hw_info_vtd with the errata flag and the CAP and
    ECAP registers, equal to what a real QEMU guest's kernel printed for the same options."""
    h, _ = make_host("x86-vtd", 1)
    unit = h.m.driver.units[0]
    unit.intremap = unit.eim = True
    cdev, devid = h.bind(0)
    fields, raw = _vtd_hw_info(h, devid, 32)
    assert (fields[3], fields[5]) == (24, u.IOMMU_HW_INFO_TYPE_INTEL_VTD)
    assert u.HW_INFO_VTD.unpack(raw[:24]) == (u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, 0,
                                              QEMU_INTREMAP_CAP, QEMU_INTREMAP_ECAP)
    assert raw[24:] == bytes(8)  # zero-filled up to data_len
    assert fields[8] == 0  # no dirty tracking (no SLADS); 6.12 has no ATS capability bit
    h.p.close(cdev)
    h.p.exit()


def test_get_hw_info_vtd_short_buffer_and_second_unit() -> None:
    """A short data_len gets only that many bytes but the full length back; a 48-bit unit
    with snoop control reports SAGAW 39|48, MGAW 47 and ECAP.SC; the QEMU default (no
    interrupt remapping) has QI, IRO and PT only."""
    m = Machine("x86-vtd", ram="1G")
    m.add_pci_device("0000:00:02.0")
    m.add_pci_device("0000:00:03.0", iommu_unit=m.add_iommu_unit(aw=48, snoop_control=True))
    p = m.spawn_process(memlock_limit="64M")
    h = Host(m, p, p.open("/dev/iommu"))
    cdev0, dev0 = h.bind(0)
    fields, raw = _vtd_hw_info(h, dev0, 12)
    assert fields[3] == 24 and raw[:12] == u.HW_INFO_VTD.pack(1, 0, QEMU_INTREMAP_CAP, 0)[:12]
    assert raw[12:] == b"\xff" * 20  # nothing written past data_len
    assert u.HW_INFO_VTD.unpack(_vtd_hw_info(h, dev0, 24)[1][:24])[3] == 0xF42
    cdev1, dev1 = h.bind(1)
    _, cap, ecap = u.HW_INFO_VTD.unpack(_vtd_hw_info(h, dev1, 24)[1][:24])[1:]
    assert (cap >> 8) & 0x1F == 0b110 and (cap >> 16) & 0x3F == 47
    assert ecap == 0xF42 | 1 << 7
    for fd in (cdev0, cdev1):
        p.close(fd)
    p.exit()


def test_get_hw_info_smmuv3_has_no_hw_info_before_7_0() -> None:
    """6.12's arm-smmu-v3 has no ``hw_info`` op: type NONE, length 0, the user's buffer
    zeroed up to data_len (``clear_user``), no IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED."""
    h, _ = make_host("arm64-smmuv3", 1)
    cdev, devid = h.bind(0)
    data = h.p.mmap(4096)
    h.p.write(data, b"\xff" * 64)
    out = h.ioctl(h.iommufd, u.IOMMU_GET_HW_INFO,
                  u.HW_INFO.pack(40, 0, devid, 48, data, 0, 0, b"\0" * 3, 0))
    _, _, _, data_len, _, info_type, _, _, caps = u.HW_INFO.unpack(out)
    assert (info_type, data_len) == (u.IOMMU_HW_INFO_TYPE_NONE, 0)
    assert h.p.read(data, 64) == bytes(48) + b"\xff" * 16
    assert not caps & u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    h.p.close(cdev)
    h.p.exit()


def test_get_hw_info_vtd_reports_ats_not_supported_from_7_0() -> None:
    """7.0's ``iommufd_get_hw_info`` sets IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED when the device
    cannot use ATS (ECAP.DT clear on QEMU's VT-d)."""
    h, _ = make_host("x86-vtd", 1, "7.0")
    cdev, devid = h.bind(0)
    assert _vtd_hw_info(h, devid, 24)[0][8] == u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    h.p.close(cdev)
    h.p.exit()


def test_get_hw_info_input_type() -> None:
    """IOMMU_HW_INFO_FLAG_INPUT_TYPE (7.0): the driver's own type or DEFAULT is answered,
    another is EOPNOTSUPP; without the flag the type field is ignored; other flags are
    EOPNOTSUPP."""
    h, _ = make_host("x86-vtd", 1, "7.0")
    cdev, devid = h.bind(0)
    flag = u.IOMMU_HW_INFO_FLAG_INPUT_TYPE
    for in_type in (u.IOMMU_HW_INFO_TYPE_DEFAULT, u.IOMMU_HW_INFO_TYPE_INTEL_VTD):
        assert _vtd_hw_info(h, devid, 24, flag, in_type)[0][5] == u.IOMMU_HW_INFO_TYPE_INTEL_VTD
    assert _vtd_hw_info(h, devid, 24, 0, u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)[0][5] == 1
    expect_errno(errno.EOPNOTSUPP, _vtd_hw_info, h, devid, 24, flag,
                 u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
    expect_errno(errno.EOPNOTSUPP, _vtd_hw_info, h, devid, 24, 2)
    h.p.close(cdev)
    h.p.exit()


def test_get_hw_info_takes_no_flag_before_7_0() -> None:
    """6.12's ``iommufd_get_hw_info`` refuses every flag, IOMMU_HW_INFO_FLAG_INPUT_TYPE
    included (EOPNOTSUPP)."""
    h, _ = make_host("x86-vtd", 1)
    cdev, devid = h.bind(0)
    expect_errno(errno.EOPNOTSUPP, _vtd_hw_info, h, devid, 24, u.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                 u.IOMMU_HW_INFO_TYPE_INTEL_VTD)
    h.p.close(cdev)
    h.p.exit()
