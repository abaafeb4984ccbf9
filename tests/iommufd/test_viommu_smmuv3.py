"""An accelerated SMMUv3 for a guest, as QEMU's ``-device arm-smmuv3,accel=on`` drives
Linux 7.0's iommufd: GET_HW_INFO, a nest-parent (stage-2) HWPT of the guest's RAM, a
vIOMMU on it, a vDEVICE giving the device its virtual StreamID, a nested HWPT from the
guest's STE (``arm_vsmmu_alloc_domain_nested``, ``arm_smmu_validate_vste``), the
device attached to it (a nested STE: Config S1+S2, the guest's CD table pointer, the
parent's VMID), the guest's raw invalidation commands run through the vIOMMU with the
VMID and StreamID substituted (``arm_vsmmu_cache_invalidate``), and a guest fault read
from the vEVENTQ with the virtual StreamID (``arm_vmaster_report_event``)."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.drivers.smmuv3 import regs
from iommulab.drivers.smmuv3.regs import STE0, STE1, STE2, Cmd, SteConfig
from iommulab.drivers.smmuv3.vsmmu import ArmVsmmu
from iommulab.iommufd import uapi as u
from iommulab.uapi import iommufd as h
from iommulab.vfio import uapi as v

from ..helpers import Host, expect_errno, make_host

VSID = 0x10
GUEST_CD_GPA = 0x8000  # where the guest keeps its CD table, in the parent's IPA space
SZ_2M = 2 << 20


def _hwpt_smmuv3(host: Host, devid: int, pt: int, ste: tuple[int, int],
                 data_len: int = 16) -> int:
    data = host.p.mmap(4096)
    host.p.write(data, struct.pack("<QQ", *ste))
    out = host.ioctl(host.iommufd, u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
        48, 0, devid, pt, 0, 0, h.IOMMU_HWPT_DATA_ARM_SMMUV3, data_len, data, 0, 0))
    return int(u.HWPT_ALLOC.unpack(out)[4])


def _invalidate(host: Host, viommu: int, cmds: list[tuple[int, int]]) -> tuple[int, int]:
    """HWPT_INVALIDATE of raw commands through the vIOMMU: (errno or 0, entry_num)."""
    data = host.p.mmap(4096)
    host.p.write(data, b"".join(struct.pack("<QQ", *c) for c in cmds))
    buf = bytearray(u.HWPT_INVALIDATE.pack(32, viommu, data,
                                           h.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16,
                                           len(cmds), 0))
    err = 0
    try:
        host.p.ioctl(host.iommufd, u.IOMMU_HWPT_INVALIDATE, buf)
    except OSError as e:
        err = e.errno or 0
    return err, int(u.HWPT_INVALIDATE.unpack(buf)[5])


def _guest_s1_ste(cd_gpa: int = GUEST_CD_GPA) -> tuple[int, int]:
    """The guest's STE: valid, stage 1, a linear CD table at ``cd_gpa``, S1DSS=SSID0."""
    return (STE0.encode(V=1, CONFIG=SteConfig.S1_TRANS, S1CTXPTR=cd_gpa),
            STE1.encode(S1DSS=2, S1CIR=1, S1COR=1, S1CSH=3))


def _setup(kernel: str = "7.0") -> tuple[Host, int, int, int, int]:
    """A 7.0 SMMUv3 machine, device 0's cdev bound; the guest RAM (2M) mapped at IPA 0 of
    an IOAS; (host, cdev, devid, ioas, guest RAM's VA)."""
    host, _ = make_host("arm64-smmuv3", 1, kernel)
    cdev, devid = host.bind(0)
    ioas = host.ioas()
    ram = host.p.mmap(SZ_2M, "thp", populate=True)
    host.ioctl(host.iommufd, u.IOMMU_IOAS_MAP, u.IOAS_MAP.pack(
        40, u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE |
        u.IOMMU_IOAS_MAP_WRITEABLE, ioas, 0, ram, SZ_2M, 0))
    return host, cdev, devid, ioas, ram


def _viommu(host: Host, devid: int, parent: int) -> int:
    out = host.ioctl(host.iommufd, u.IOMMU_VIOMMU_ALLOC, u.VIOMMU_ALLOC.pack(
        40, 0, h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, devid, parent, 0, 0, 0, 0))
    return int(u.VIOMMU_ALLOC.unpack(out)[5])


def test_accelerated_smmuv3_guest_walkthrough() -> None:
    host, cdev, devid, ioas, _ = _setup()
    m, smmu = host.m, host.m.core.driver
    # 1. what the VMM builds its virtual SMMU's ID registers from
    info = host.p.mmap(4096)
    out = host.ioctl(host.iommufd, u.IOMMU_GET_HW_INFO,
                     u.HW_INFO.pack(40, 0, devid, 40, info, 0, 0, b"\0" * 3, 0))
    assert u.HW_INFO.unpack(out)[5] == h.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    idr0 = u.HW_INFO_ARM_SMMUV3.unpack(host.p.read(info, 40))[2]
    assert regs.IDR0["S1P"].get(idr0) and regs.IDR0["S2P"].get(idr0)
    # 2. the stage-2 nest parent of the guest's RAM, and the vIOMMU on it
    parent = host.hwpt(devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    plain = host.hwpt(devid, ioas)
    expect_errno(errno.EINVAL, _viommu, host, devid, plain)  # no nest parent
    viommu = _viommu(host, devid, parent)
    ctx = host.p.files[host.iommufd].ctx  # type: ignore[attr-defined]
    vsmmu = ctx.objects[viommu].ops
    assert isinstance(vsmmu, ArmVsmmu)
    assert vsmmu.vmid == ctx.objects[parent].domain.vmid != 0
    # 3. the device's virtual StreamID
    out = host.ioctl(host.iommufd, u.IOMMU_VDEVICE_ALLOC,
                     u.VDEVICE_ALLOC.pack(24, viommu, devid, 0, VSID))
    vdev = int(u.VDEVICE_ALLOC.unpack(out)[3])
    # 4. the guest's STE, refused as arm_smmu_validate_vste refuses it (EIO), then taken
    s1 = _guest_s1_ste()
    expect_errno(errno.EIO, _hwpt_smmuv3, host, devid, viommu,
                 (s1[0], s1[1] | STE1.encode(STRW=2)))  # a field nesting does not allow
    expect_errno(errno.EIO, _hwpt_smmuv3, host, devid, viommu,
                 (STE0.encode(V=1, CONFIG=SteConfig.S2_TRANS), 0))
    expect_errno(errno.EIO, _hwpt_smmuv3, host, devid, viommu,
                 (s1[0], s1[1] | STE1.encode(EATS=2)))
    expect_errno(errno.EINVAL, _hwpt_smmuv3, host, devid, viommu, s1, data_len=8)
    # on the parent HWPT itself: 7.0's arm-smmu-v3 has no domain_alloc_nested
    expect_errno(errno.EOPNOTSUPP, _hwpt_smmuv3, host, devid, parent, s1)
    abort = _hwpt_smmuv3(host, devid, viommu, (0, 0xFFFF))  # no V: all zero, an abort STE
    nested = _hwpt_smmuv3(host, devid, viommu, s1)
    # 5. attach: the physical STE is nested, with the guest's CD table and the VMID
    assert host.attach(cdev, nested) == nested
    (sid,) = smmu.masters  # the device's one StreamID
    ste = [int(x) for x in smmu.strtab[sid * 8:sid * 8 + 4]]
    assert STE0["CONFIG"].get(ste[0]) == SteConfig.NESTED
    assert STE0["S1CTXPTR"].get(ste[0]) == GUEST_CD_GPA
    assert STE1["MEV"].get(ste[1]) and STE1["S1DSS"].get(ste[1]) == 2
    assert STE2["S2VMID"].get(ste[2]) == vsmmu.vmid
    expect_errno(errno.EBUSY, host.ioctl, host.iommufd, u.IOMMU_DESTROY,
                 u.DESTROY.pack(8, viommu))
    # 6. the guest's invalidations: VMID and StreamID substituted, in order, synced
    vs = vsmmu.vmid << 32
    good = [(Cmd.TLBI_NH_VA | (5 << 48), 0x1000), (Cmd.TLBI_NH_ASID | (5 << 48), 0),
            (Cmd.CFGI_CD | (VSID << 32), 1), (Cmd.TLBI_NSNH_ALL, 0xFFFF)]
    assert _invalidate(host, viommu, good) == (0, 4)
    assert vsmmu.issued == [(Cmd.TLBI_NH_VA | (5 << 48) | vs, 0x1000),
                            (Cmd.TLBI_NH_ASID | (5 << 48) | vs, 0),
                            (Cmd.CFGI_CD | (sid << 32), 1), (Cmd.TLBI_NH_ALL | vs, 0)]
    vsmmu.issued.clear()
    for bad in ((Cmd.TLBI_S2_IPA, 0), (Cmd.CFGI_STE | (VSID << 32), 0),
                (Cmd.CFGI_CD | ((VSID + 1) << 32), 0), (Cmd.CMD_SYNC, 0)):
        assert _invalidate(host, viommu, [good[0], bad]) == (errno.EIO, 1)
    assert vsmmu.issued == []  # a batch cut short by a bad command was never issued
    # 7. a guest fault: the record the SMMU wrote, with the vSID, from the vEVENTQ
    out = host.ioctl(host.iommufd, u.IOMMU_VEVENTQ_ALLOC, u.VEVENTQ_ALLOC.pack(
        32, 0, viommu, h.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 8, 0, 0, 0))
    veventq, fd = u.VEVENTQ_ALLOC.unpack(out)[5:7]
    dev = m.devices["0000:00:02.0"]
    with pytest.raises(OSError):
        dev.dma_read(0x1000, 8)  # the guest's CD table holds no valid CD
    smmu.handle_events()
    raw = host.p.read_fd(fd, 4096)
    assert len(raw) == 8 + 32
    flags, seq = struct.unpack_from("<II", raw)
    evt = struct.unpack_from("<4Q", raw, 8)
    assert (flags, seq) == (0, 0)
    assert regs.EVT0["SID"].get(evt[0]) == VSID
    assert regs.EVT0["ID"].get(evt[0]) == smmu.events[-1].id
    assert not any("received" in line for line in smmu.log[-1:])  # forwarded, not logged
    # 8. teardown in the VMM's order; nothing is left held
    host.ioctl(cdev, v.VFIO_DEVICE_DETACH_IOMMUFD_PT, v.DETACH_IOMMUFD_PT.pack(12, 0, 0))
    host.p.close(fd)
    for id in (veventq, abort, nested, vdev, viommu, parent, plain):
        host.ioctl(host.iommufd, u.IOMMU_DESTROY, u.DESTROY.pack(8, id))
    ctx._check()
    host.p.close(cdev)
    host.p.exit()
    assert m.mem.pins.pins == 0


def test_smmuv3_on_6_12_has_no_viommu() -> None:
    """The same VMM on 6.12: VIOMMU_ALLOC is ENOTTY and a nest parent is refused by
    ``arm_smmu_domain_alloc_user`` (EOPNOTSUPP)."""
    host, cdev, devid, ioas, _ = _setup("6.12")
    expect_errno(errno.EOPNOTSUPP, host.hwpt, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    expect_errno(errno.ENOTTY, _viommu, host, devid, 1)
    host.p.close(cdev)
    host.p.exit()


def test_the_api_methods_drive_the_same_path() -> None:
    """``iommulab.api.Iommufd``'s vIOMMU methods on a model process: a vIOMMU, a vDEVICE,
    a nested HWPT from a guest STE, an invalidation (the count, and ``entry_num`` on the
    error of a bad second command), a vEVENTQ and its fd."""
    from iommulab.api import Iommufd
    host, cdev, devid, ioas, _ = _setup()
    fd = Iommufd(host.iommufd, host.p)
    parent = fd.hwpt_alloc(devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = fd.viommu_alloc(devid, parent, h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
    vdev = fd.vdevice_alloc(viommu, devid, VSID)
    nested = fd.hwpt_alloc_nested(devid, viommu, h.IOMMU_HWPT_DATA_ARM_SMMUV3,
                                  struct.pack("<QQ", *_guest_s1_ste()))
    inv = h.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3
    nh_all = struct.pack("<QQ", Cmd.TLBI_NH_ALL, 0)
    assert fd.hwpt_invalidate(viommu, inv, [nh_all, nh_all]) == 2
    with pytest.raises(OSError) as e:
        fd.hwpt_invalidate(viommu, inv, [nh_all, struct.pack("<QQ", Cmd.TLBI_S2_IPA, 0)])
    assert (e.value.errno, e.value.entry_num) == (errno.EIO, 1)  # type: ignore[attr-defined]
    q, qfd = fd.veventq_alloc(viommu, h.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 4)
    assert host.p.read_fd(qfd, 64) == b""
    host.p.close(qfd)
    for id in (q, nested, vdev, viommu, parent):
        fd.destroy(id)
    host.p.close(cdev)
    host.p.exit()
