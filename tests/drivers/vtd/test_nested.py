"""VT-d nested translation through iommufd: a nest-parent second stage on an IOAS, a
guest first stage (``IOMMU_HWPT_DATA_VTD_S1``) in guest memory, device DMA through both
stages, HWPT_INVALIDATE with ``struct iommu_hwpt_vtd_s1_invalidate`` entries, faults of
each stage and second-stage dirty tracking under nesting (drivers/iommu/intel/nested.c,
pasid.c, cache.c; VT-d spec 3.6-3.8, 6.5.2).

The device goes onto a nested HWPT with VFIO_DEVICE_ATTACH_IOMMUFD_PT, on 6.12 and
7.0 alike."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Machine, Prot
from iommulab.api import Iommufd, VfioDevice
from iommulab.drivers.vtd_sm import PGTT_NESTED, IotlbInv, PiotlbInv
from iommulab.errors import DmaFault
from iommulab.iommu.domain import DomainType
from iommulab.iommufd import uapi as u
from iommulab.machine import Process
from iommulab.pgtable.vtd_fs import FL_A, FL_D, FirstStageBuilder

from ...helpers import expect_errno

NEST_PARENT, DIRTY = u.IOMMU_HWPT_ALLOC_NEST_PARENT, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
DATA_VTD_S1, INV_VTD_S1 = 1, 0
SRE, EAFE, WPE = 1, 2, 4
GUEST = 0x1000_0000  # guest-physical base of the guest RAM in the IOAS
GUEST_PAGES = 64
U64_MAX = (1 << 64) - 1


def _ctx(p: Process, fd: Iommufd) -> Any:
    """The iommufd context behind ``fd`` (its ``struct iommufd_ctx``)."""
    return cast(Any, p.fget(fd.fd)).ctx


@dataclass
class Nest:
    """A scalable-mode machine, one vfio-pci device bound to an iommufd, an IOAS holding
    the guest's RAM at GUEST, a nest-parent HWPT on it and a guest first stage."""

    m: Machine
    p: Process
    fd: Iommufd
    vdev: VfioDevice
    dev_id: int
    ioas: int
    parent: int
    ram: int
    fs: FirstStageBuilder
    kernel: str = "6.12"
    baseline: tuple[int, int] = (0, 0)  # iommu pages and domain ids before the process

    def gpa_to_va(self, gpa: int) -> int:
        return self.ram + gpa - GUEST

    def read_gpa_u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.p.read(self.gpa_to_va(gpa), 8))[0])

    def nested(self, flags: int = 0, addr_width: int = 48, pgtbl: int | None = None, *,
               hwpt_flags: int = 0, data_type: int = DATA_VTD_S1, data_len: int = 24,
               parent: int | None = None, null: bool = False) -> int:
        """HWPT_ALLOC of a nested HWPT with ``struct iommu_hwpt_vtd_s1``: its id."""
        p = self.p
        uptr = p.mmap(4096)
        root = self.fs.root if pgtbl is None else pgtbl
        p.write(uptr, struct.pack("<QQII", flags, root, addr_width, 0))
        cmd = bytearray(u.HWPT_ALLOC.pack(48, hwpt_flags, self.dev_id,
                                          self.parent if parent is None else parent, 0, 0,
                                          data_type, data_len, 0 if null else uptr, 0, 0))
        try:
            p.ioctl(self.fd.fd, u.IOMMU_HWPT_ALLOC, cmd)
        finally:
            p.munmap(uptr, 4096)
        return int(u.HWPT_ALLOC.unpack(cmd)[4])

    def attach(self, hwpt_id: int) -> None:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT onto the HWPT."""
        assert self.vdev.attach_pt(hwpt_id) == hwpt_id

    def invalidate(self, entries: list[tuple[int, int, int, int]], *, data_type: int = INV_VTD_S1,
                   entry_len: int = 24, hwpt: int) -> tuple[int, int]:
        """HWPT_INVALIDATE of (addr, npages, flags, __reserved) entries: (errno, done)."""
        p = self.p
        uptr = p.mmap(4096)
        raw = b"".join(struct.pack("<QQII", *e).ljust(entry_len, b"\0")[:max(entry_len, 24)]
                       for e in entries)
        p.write(uptr, raw)
        buf = bytearray(u.HWPT_INVALIDATE.pack(32, hwpt, uptr, data_type, entry_len,
                                               len(entries), 0))
        err = 0
        try:
            p.ioctl(self.fd.fd, u.IOMMU_HWPT_INVALIDATE, buf)
        except OSError as e:
            err = e.errno or 0
        p.munmap(uptr, 4096)
        return err, int(u.HWPT_INVALIDATE.unpack(buf)[5])

    def close(self) -> None:
        """The process exits (its fds close): nothing pinned or charged, and the HWPTs'
        tables and domain ids are gone (the device is back on its default domain)."""
        self.p.exit()
        assert self.m.mem.pins.pins == 0
        assert self.p.mm.locked_vm == 0 and self.p.mm.pinned_vm == 0
        assert all(user.locked_vm == 0 for user in self.m.users.values())
        assert (self.m.mem.iommu_pages, len(self.m.translator.used_dids)) == self.baseline
        self.m.mem._check()

    @property
    def dev(self) -> Any:
        return self.m.devices["0000:00:04.0"]

    @property
    def sm(self) -> Any:
        return self.m.translator.sm


def _nest(kernel: str = "6.12", parent_flags: int = NEST_PARENT, **unit: bool) -> Nest:
    m = Machine("x86-vtd", kernel=kernel, vtd_scalable=True)
    for k, v in unit.items():
        setattr(m.translator, k, v)
    m.add_pci_device("0000:00:04.0")
    baseline = (m.mem.iommu_pages, len(m.translator.used_dids))
    p = m.spawn_process(cap_ipc_lock=True)
    fd = Iommufd.open(p)
    dev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p)
    dev_id = dev.bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    ram = p.mmap(GUEST_PAGES * 4096)
    fd.ioas_map(ioas, ram, GUEST_PAGES * 4096, GUEST)
    parent = fd.hwpt_alloc(dev_id, ioas, parent_flags)
    nxt = iter(range(GUEST + 4096, GUEST + 16 * 4096, 4096))  # guest pages 1-15: tables

    def write_u64(gpa: int, value: int) -> None:
        p.write(ram + gpa - GUEST, struct.pack("<Q", value))

    n = Nest(m, p, fd, dev, dev_id, ioas, parent, ram,
             FirstStageBuilder(lambda: next(nxt), write_u64), kernel, baseline)
    _OPEN.append(n)
    return n


_OPEN: list[Nest] = []


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    """Every test's machines are closed and checked for leaks after it."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _fs_leaf(n: Nest, iova: int) -> int:
    """The guest's 4K first-stage leaf of ``iova``, read by hand from guest memory."""
    table = n.fs.root
    for level in (4, 3, 2):
        table = n.read_gpa_u64(table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8) \
            & ~0xFFF & ((1 << 52) - 1)
    return n.read_gpa_u64(table + ((iova >> 12) & 511) * 8)


def _fault_reason(n: Nest, iova: int, *, write: bool) -> int:
    with pytest.raises(DmaFault):
        if write:
            n.dev.dma_write(iova, b"x")
        else:
            n.dev.dma_read(iova, 1)
    return int(n.m.faults[-1].reason)


# -- allocation ----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_legacy_unit_refuses_nest_parent_and_dirty_tracking(kernel: str) -> None:
    """QEMU's legacy-mode unit: no scalable mode, so neither nesting nor SSADS."""
    m = Machine("x86-vtd", kernel=kernel)
    m.add_pci_device("0000:00:04.0")
    p = m.spawn_process(cap_ipc_lock=True)
    fd = Iommufd.open(p)
    dev_id = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p).bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    expect_errno(errno.EOPNOTSUPP, fd.hwpt_alloc, dev_id, ioas, NEST_PARENT)
    expect_errno(errno.EOPNOTSUPP, fd.hwpt_alloc, dev_id, ioas, DIRTY)
    assert fd.hwpt_alloc(dev_id, ioas) == ioas + 1  # nothing was used up by the refusals


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_nest_parent_needs_ecap_nest_and_dirty_needs_ssads(kernel: str) -> None:
    n = _nest(kernel, parent_flags=0, nest=False, ssads=False)
    expect_errno(errno.EOPNOTSUPP, n.fd.hwpt_alloc, n.dev_id, n.ioas, NEST_PARENT)
    expect_errno(errno.EOPNOTSUPP, n.fd.hwpt_alloc, n.dev_id, n.ioas, DIRTY)
    ecap = n.m.translator.ecap_reg
    assert ecap >> 43 & 1 and not ecap >> 26 & 1 and not ecap >> 45 & 1  # SMTS, no NEST/SLADS


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_nested_alloc_errors_in_the_kernels_order(kernel: str) -> None:
    """iommufd_hwpt_nested_alloc, then 6.12 intel_iommu_domain_alloc_user with a parent
    and intel_nested_domain_alloc / 7.0 intel_iommu_domain_alloc_nested: each refusal
    leaves no object behind. IOMMU_HWPT_ALLOC_PASID is 7.0's (6.12's core refuses it)."""
    n = _nest(kernel)
    plain = n.fd.hwpt_alloc(n.dev_id, n.ioas)
    if kernel == "7.0":
        n.fd.destroy(n.nested(hwpt_flags=u.IOMMU_HWPT_ALLOC_PASID))
    else:
        expect_errno(errno.EOPNOTSUPP, n.nested, hwpt_flags=u.IOMMU_HWPT_ALLOC_PASID)
    expect_errno(errno.EOPNOTSUPP, n.nested, hwpt_flags=NEST_PARENT)  # core: flags
    expect_errno(errno.EINVAL, n.nested, parent=plain)  # core: not a nest parent
    expect_errno(errno.EOPNOTSUPP, n.nested, data_type=2)  # driver: not VTD_S1
    expect_errno(errno.EINVAL, n.nested, data_len=23)  # below offsetofend(__reserved)
    expect_errno(errno.EINVAL, n.nested, data_len=25)  # above the struct
    expect_errno(errno.EFAULT, n.nested, null=True)
    # nothing about addr_width or the flags is checked before attach
    first = n.nested(addr_width=52, flags=1 << 40)
    assert first == plain + 1
    expect_errno(errno.EBUSY, n.fd.destroy, n.parent)  # the nested HWPT holds its parent
    n.fd.destroy(first)
    n.fd.destroy(n.parent)


def test_7_0_domain_alloc_nested_takes_pasid_flag_only() -> None:
    """7.0 ``intel_iommu_domain_alloc_nested``: EOPNOTSUPP for a flag other than
    IOMMU_HWPT_ALLOC_PASID; 6.12's ``domain_alloc_user`` refuses any flag."""
    from iommulab.iommu.user_data import IommuUserData
    raw = struct.pack("<QQII", 0, GUEST + 4096, 48, 0)
    data = IommuUserData(DATA_VTD_S1, 0, 24, lambda a, k: raw[:k])
    for kernel, ok in (("6.12", False), ("7.0", True)):
        n = _nest(kernel)
        ctx = _ctx(n.p, n.fd)
        parent = ctx.objects[n.parent].domain
        master = n.dev.dev_iommu.priv
        pasid_flag = u.IOMMU_HWPT_ALLOC_PASID
        if ok:
            dom = n.m.driver.domain_alloc_nested(master, pasid_flag, parent, data)
            dom.free()
        else:
            expect_errno(errno.EOPNOTSUPP, n.m.driver.domain_alloc_nested, master,
                         pasid_flag, parent, data)
        expect_errno(errno.EOPNOTSUPP, n.m.driver.domain_alloc_nested, master, NEST_PARENT,
                     parent, data)


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_read_only_map_on_a_nest_parent_is_refused(kernel: str) -> None:
    """ERRATA_772415_SPR17: 6.12's ``__domain_mapping`` and 7.0's vtdss
    ``FORCE_WRITEABLE`` refuse a read-only map on a nest parent (EINVAL)."""
    n = _nest(kernel)
    va = n.p.mmap(4096)
    expect_errno(errno.EINVAL, n.fd.ioas_map, n.ioas, va, 4096, 0x8000_0000,
                 u.IOMMU_IOAS_MAP_READABLE)


# -- attach ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "unit", "err"), [
    (dict(addr_width=52), {}, errno.EINVAL),
    (dict(addr_width=57), dict(fl5lp=False), errno.EINVAL),
    (dict(flags=SRE), dict(srs=False), errno.EINVAL),
    (dict(flags=EAFE), {}, errno.EINVAL),  # the unit has no EAFS
])
def test_setup_nested_refusals(cfg: dict[str, Any], unit: dict[str, Any], err: int) -> None:
    """``intel_pasid_setup_nested``: the attach fails, the device stays blocked (no PASID
    entry), and the domain's id is given back."""
    n = _nest("6.12", NEST_PARENT, **unit)
    hwpt = n.nested(**cfg)
    expect_errno(err, n.attach, hwpt)
    assert _fault_reason(n, 0, write=False) == 0x59  # PASID entry not present
    assert not n.m.translator.used_dids


def _two_units(kernel: str, aw: int, **unit1: bool
               ) -> tuple[Machine, Process, Iommufd, VfioDevice, VfioDevice]:
    """vfio0 behind the machine's scalable unit, vfio1 behind a second scalable unit of
    ``aw`` bits with the capability flags ``unit1`` overridden; both cdevs open in one
    process with an iommufd, neither bound."""
    m = Machine("x86-vtd", kernel=kernel, vtd_scalable=True)
    m.add_pci_device("0000:00:04.0")
    unit = m.add_iommu_unit(aw=aw, scalable=True)
    for k, v in unit1.items():
        setattr(m.driver.units[unit], k, v)
    m.add_pci_device("0000:00:05.0", iommu_unit=unit)
    p = m.spawn_process(cap_ipc_lock=True)
    fd = Iommufd.open(p)
    return (m, p, fd, VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p),
            VfioDevice.open_cdev("/dev/vfio/devices/vfio1", p))


def test_attach_enodev_when_the_unit_agaw_is_below_the_parents() -> None:
    """``intel_nested_attach_dev``: a device behind a 39-bit (3-level) unit under a
    parent made for a 48-bit (4-level) one: ENODEV, before the parent's own checks."""
    # no first stage there, so DMA domains stay second-stage (first_level_by_default):
    # a 3-level first stage cannot be set up
    m, p, fd, dev0, dev1 = _two_units("6.12", 39, flts=False)
    d0 = dev0.bind_iommufd(fd)
    dev1.bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    parent = fd.hwpt_alloc(d0, ioas, NEST_PARENT)
    uptr = p.mmap(4096)
    p.write(uptr, struct.pack("<QQII", 0, GUEST, 48, 0))
    cmd = bytearray(u.HWPT_ALLOC.pack(48, 0, d0, parent, 0, 0, DATA_VTD_S1, 24, uptr, 0, 0))
    p.ioctl(fd.fd, u.IOMMU_HWPT_ALLOC, cmd)
    expect_errno(errno.ENODEV, dev1.attach_pt, int(u.HWPT_ALLOC.unpack(cmd)[4]))
    p.exit()
    assert m.mem.pins.pins == 0


# -- two-stage DMA --------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dma_goes_through_both_stages_and_sets_first_stage_a_d(kernel: str) -> None:
    n = _nest(kernel)
    n.fs.map(0x4000_0000, GUEST + 40 * 4096)
    n.fs.map(0x4020_0000, GUEST + 41 * 4096, write=False)
    hwpt = n.nested()
    n.attach(hwpt)
    n.dev.dma_write(0x4000_0010, b"hello")
    assert n.p.read(n.gpa_to_va(GUEST + 40 * 4096 + 0x10), 5) == b"hello"
    n.p.write(n.gpa_to_va(GUEST + 41 * 4096), b"guest")
    assert n.dev.dma_read(0x4020_0000, 5) == b"guest"
    pte = _fs_leaf(n, 0x4000_0000)
    assert pte & FL_A and pte & FL_D
    ro = _fs_leaf(n, 0x4020_0000)
    assert ro & FL_A and not ro & FL_D  # read only: accessed, never dirty
    pe = n.sm.pasid_cache[(n.dev.sid, 0)]
    assert pe.pgtt == PGTT_NESTED and pe.fsptptr == n.fs.root


@pytest.mark.parametrize(("setup", "iova", "write", "reason"), [
    ("none", 0x4000_0000, False, 0x71),  # first-stage entry not present
    ("ro", 0x4000_0000, True, 0x85),  # write to a read-only first-stage leaf
    ("supervisor", 0x4000_0000, False, 0x81),  # US clear: requests without PASID are user
    ("none", 1 << 47, False, 0x80),  # not canonical for 4 levels
    ("gpa_unmapped", 0x4000_0000, False, 0x79),  # output GPA: no second-stage table
    ("gpa_unmapped", 0x4000_0000, True, 0x79),
    ("gpa_hole", 0x4000_0000, False, 0x86),  # output GPA: no second-stage leaf
    ("gpa_hole", 0x4000_0000, True, 0x85),
    ("root_unmapped", 0x4000_0000, False, 0x75),  # the PML4 itself not in stage 2
])
def test_faults_of_each_stage(setup: str, iova: int, write: bool, reason: int) -> None:
    n = _nest()
    pgtbl = None
    if setup == "ro":
        n.fs.map(0x4000_0000, GUEST + 40 * 4096, write=False)
    elif setup == "supervisor":
        n.fs.map(0x4000_0000, GUEST + 40 * 4096, user=False)
    elif setup == "gpa_unmapped":
        n.fs.map(0x4000_0000, 0x7000_0000)
    elif setup == "gpa_hole":
        n.fs.map(0x4000_0000, GUEST + GUEST_PAGES * 4096)  # just past the guest RAM
    elif setup == "root_unmapped":
        pgtbl = 0x7000_0000
    n.attach(n.nested(pgtbl=pgtbl))
    assert _fault_reason(n, iova, write=write) == reason
    assert f"[fault reason {reason:#04x}]" in str(n.m.faults[-1])


# -- invalidation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_missing_guest_invalidation_leaves_a_stale_iotlb_entry(kernel: str) -> None:
    """The guest re-points a first-stage leaf: until it invalidates, DMA still goes to
    the old page (the IOTLB entry); a page-selective HWPT_INVALIDATE (a P_IOTLB of the
    nested domain's DID) removes it, and the next DMA walks to the new page."""
    n = _nest(kernel)
    n.fs.map(0x4000_0000, GUEST + 40 * 4096)
    hwpt = n.nested()
    n.attach(hwpt)
    n.dev.dma_write(0x4000_0000, b"one")
    n.fs.unmap(0x4000_0000)
    n.fs.map(0x4000_0000, GUEST + 41 * 4096)
    n.dev.dma_write(0x4000_0000, b"two")
    read = n.p.read
    assert read(n.gpa_to_va(GUEST + 40 * 4096), 3) == b"two"  # stale
    assert n.invalidate([(0x4000_1000, 1, 0, 0)], hwpt=hwpt) == (0, 1)  # another page
    n.dev.dma_write(0x4000_0000, b"333")
    assert read(n.gpa_to_va(GUEST + 40 * 4096), 3) == b"333"  # still stale
    before = n.sm.counts["PiotlbInv"]
    assert n.invalidate([(0x4000_0000, 1, 1, 0)], hwpt=hwpt) == (0, 1)  # LEAF
    assert n.sm.counts["PiotlbInv"] == before + 1
    n.dev.dma_write(0x4000_0000, b"new")
    assert read(n.gpa_to_va(GUEST + 41 * 4096), 3) == b"new"
    n.fs.unmap(0x4000_0000)
    assert n.invalidate([(0, U64_MAX, 0, 0)], hwpt=hwpt) == (0, 1)  # everything
    assert _fault_reason(n, 0x4000_0000, write=False) == 0x71


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_invalidate_errors_and_entry_num(kernel: str) -> None:
    """``intel_nested_cache_invalidate_user``: the type first (0 done), then per entry,
    stopping at the first bad one with the entries done so far. A paging HWPT is ENOENT
    to 6.12's ``iommufd_get_hwpt_nested`` and EINVAL to 7.0's lookup of any object."""
    n = _nest(kernel)
    hwpt = n.nested()
    good = (0x4000_0000, 1, 0, 0)
    assert n.invalidate([good], data_type=1, hwpt=hwpt) == (errno.EINVAL, 0)
    assert n.invalidate([good, (0, 1, 2, 0)], hwpt=hwpt) == (errno.EOPNOTSUPP, 1)
    assert n.invalidate([good, (0, 1, 0, 1)], hwpt=hwpt) == (errno.EOPNOTSUPP, 1)
    assert n.invalidate([good, (0x800, 1, 0, 0)], hwpt=hwpt) == (errno.EINVAL, 1)
    assert n.invalidate([good, (0x1000, U64_MAX, 0, 0)], hwpt=hwpt) == (errno.EINVAL, 1)
    assert n.invalidate([good], entry_len=16, hwpt=hwpt) == (errno.EINVAL, 0)
    assert n.invalidate([good, good], hwpt=hwpt) == (0, 2)
    assert n.invalidate([good], hwpt=n.parent) == (
        errno.EINVAL if kernel == "7.0" else errno.ENOENT, 0)  # not a nested HWPT


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_invalidation_array_running_off_its_mapping_stops_at_the_unreadable_entry(
        kernel: str) -> None:
    """Entries are copied one at a time: an array whose fourth entry straddles the end
    of the mapping does three and answers EFAULT; one whose entries all fit in the
    mapping's last page does them all (the array is read a page at a time)."""
    n = _nest(kernel)
    hwpt = n.nested()
    p = n.p
    va = p.mmap(2 * 4096)
    p.munmap(va + 4096, 4096)
    start = va + 4096 - 3 * 24 - 8  # entries 0-2 fit, entry 3 crosses into the hole
    p.write(start, struct.pack("<QQII", 0x4000_0000, 1, 0, 0) * 3 + bytes(8))

    def invalidate(num: int) -> tuple[int, int]:
        buf = bytearray(u.HWPT_INVALIDATE.pack(32, hwpt, start, INV_VTD_S1, 24, num, 0))
        err = 0
        try:
            p.ioctl(n.fd.fd, u.IOMMU_HWPT_INVALIDATE, buf)
        except OSError as e:
            err = e.errno or 0
        return err, int(u.HWPT_INVALIDATE.unpack(buf)[5])

    assert invalidate(3) == (0, 3)
    assert invalidate(4) == (errno.EFAULT, 3)
    assert invalidate(100) == (errno.EFAULT, 3)
    p.munmap(va, 4096)


def test_parent_unmap_flushes_the_nested_translations() -> None:
    """The parent's NESTING cache tag: unmapping guest RAM from the IOAS sends an IOTLB
    invalidation with the nested domain's DID, which drops every nested entry of it,
    so the next DMA faults in the second stage instead of reaching the freed page."""
    n = _nest()
    n.fs.map(0x4000_0000, GUEST + 40 * 4096)
    n.attach(n.nested())
    n.dev.dma_write(0x4000_0000, b"x")
    did = n.sm.pasid_cache[(n.dev.sid, 0)].did
    assert n.sm.iotlb
    before = n.sm.counts["IotlbInv"]
    n.fd.ioas_unmap(n.ioas, GUEST, GUEST_PAGES * 4096)
    assert not n.sm.iotlb
    assert n.sm.counts["IotlbInv"] > before
    assert _fault_reason(n, 0x4000_0000, write=True) == 0x75  # the PML4 is gone too
    assert did in n.m.translator.used_dids


def test_invalidation_descriptors_remove_what_the_spec_says() -> None:
    """IOTLB invalidations never drop first-stage-only entries and drop every nested entry
    of the DID whatever the address; P_IOTLB of one page drops only that page."""
    n = _nest()
    for i in range(3):
        n.fs.map(0x4000_0000 + i * 4096, GUEST + (40 + i) * 4096)
    n.attach(n.nested())
    for i in range(3):
        n.dev.dma_read(0x4000_0000 + i * 4096, 1)
    did = n.sm.pasid_cache[(n.dev.sid, 0)].did
    assert len(n.sm.iotlb) == 3
    n.sm.submit([PiotlbInv(3, did, 0, 0x4000_1000, 0)])
    assert sorted(k[3] for k in n.sm.iotlb) == [0x40000, 0x40002]
    n.sm.submit([IotlbInv(3, did + 1, 0x7000_0000, 0)])  # another domain: nothing
    assert len(n.sm.iotlb) == 2
    n.sm.submit([IotlbInv(3, did, 0x7000_0000, 0)])  # nested: all of the DID
    assert not n.sm.iotlb
    n.sm._check()


# -- dirty tracking under nesting --------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_second_stage_dirty_bits_under_nesting(kernel: str) -> None:
    """GET_DIRTY_BITMAP on the parent reports the guest pages the device wrote through
    the guest's first stage, and the first-stage table page whose leaf got its D flag
    (an A/D update is a write through the second stage); clearing flushes the nested
    DID, so the next write sets D again."""
    n = _nest(kernel, parent_flags=NEST_PARENT | DIRTY)
    n.fs.map(0x4000_0000, GUEST + 40 * 4096)
    n.fs.map(0x4000_1000, GUEST + 41 * 4096)
    n.attach(n.nested())
    n.fd.hwpt_set_dirty_tracking(n.parent, True)

    def dirty_pages() -> list[int]:
        raw = n.fd.hwpt_get_dirty_bitmap(n.parent, GUEST, GUEST_PAGES * 4096)
        bits = int.from_bytes(raw, "little")
        return [i for i in range(GUEST_PAGES) if bits >> i & 1]

    assert dirty_pages() == []
    n.dev.dma_read(0x4000_1000, 4)
    assert dirty_pages() == [4]  # only the leaf table (A set by the walk); page 41 read
    n.dev.dma_write(0x4000_0000, b"dirty")
    assert dirty_pages() == [4, 40]  # D in the leaf table entry, and the data page
    assert dirty_pages() == []  # cleared
    n.dev.dma_write(0x4000_0000, b"again")
    assert dirty_pages() == [40]  # the IOTLB was flushed: D set again, FS D already set
    n.fd.hwpt_set_dirty_tracking(n.parent, False)
    n.dev.dma_write(0x4000_1000, b"off")
    assert n.sm.pasid_cache[(n.dev.sid, 0)].ssade is False


# -- property: the two-stage walk against a plain composition --------------------------------

@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(16, GUEST_PAGES - 1), st.booleans()),
                min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 63), st.booleans()), min_size=1, max_size=20))
def test_two_stage_walk_matches_the_composition(maps: list[tuple[int, int, bool]],
                                                 accesses: list[tuple[int, bool]]) -> None:
    """Random guest first-stage pages (IOVA page -> guest page, writable) over the IOAS's
    guest RAM, random reads and writes: each access lands where the first stage then the
    IOAS map put it, or faults with 0x71 (no first-stage entry) / 0x85 (read-only)."""
    n = _nest()
    ref: dict[int, tuple[int, bool]] = {}
    for page, gpage, writable in maps:
        n.fs.map(0x4000_0000 + page * 4096, GUEST + gpage * 4096, write=writable)
        ref[page] = (gpage, writable)
    hwpt = n.nested()
    n.attach(hwpt)
    for page, write in accesses:
        iova = 0x4000_0000 + page * 4096 + 8
        if page not in ref or (write and not ref[page][1]):
            assert _fault_reason(n, iova, write=write) == (0x71 if page not in ref else 0x85)
            continue
        va = n.gpa_to_va(GUEST + ref[page][0] * 4096 + 8)
        if write:
            n.dev.dma_write(iova, struct.pack("<Q", iova))
            assert n.p.read(va, 8) == struct.pack("<Q", iova)
        else:
            assert n.dev.dma_read(iova, 8) == n.p.read(va, 8)
    n.sm._check()


# -- fault injection ------------------------------------------------------------------------

def test_nested_alloc_and_attach_under_fail_nth() -> None:
    """Fail the nested HWPT_ALLOC, then the attach, at their 1st, 2nd, ... fail point
    until each succeeds: a failed allocation leaves no object and the parent's users as
    they were; a failed attach leaves the device blocked (no PASID entry), no domain id
    taken and the nested domain without devices."""
    n = _nest()
    n.fs.map(0x4000_0000, GUEST + 40 * 4096)
    ctx = _ctx(n.p, n.fd)
    fail = n.m.mem.fail_nth
    before = (dict(ctx.objects), ctx.objects[n.parent].users)
    tries = 0
    while True:
        tries += 1
        fail.arm(tries)
        try:
            hwpt = n.nested()
        except OSError:
            assert fail.fired is not None
            assert (dict(ctx.objects), ctx.objects[n.parent].users) == before, fail.fired
            assert not ctx._reserved
            continue
        finally:
            fail.disarm()
        break
    assert tries > 2  # the object, its id, the driver's kzalloc
    dids = set(n.m.translator.used_dids)
    tries = 0
    fired: list[str] = []
    while True:
        tries += 1
        fail.arm(tries)
        try:
            n.attach(hwpt)
        except OSError:
            assert fail.fired is not None
            fired.append(fail.fired)
            assert n.m.translator.used_dids <= dids, fail.fired
            assert not ctx.objects[hwpt].domain.devices
            fail.disarm()
            assert _fault_reason(n, 0x4000_0000, write=False) == 0x59
            continue
        finally:
            fail.disarm()
        if fail.fired is None:
            break
        n.vdev.detach_pt()  # a failure the kernel absorbs (a reserved region left out)
    assert tries > 2 and any("cache_tag" in site for site in fired), fired
    n.dev.dma_write(0x4000_0000, b"ok")


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dirty_tracking_domain_refused_on_a_unit_without_ssads(kernel: str) -> None:
    """6.12 ``prepare_domain_attach_device`` / 7.0 ``paging_domain_compatible_second_stage``:
    a dirty-tracking domain cannot attach through a unit without SSADS (EINVAL)."""
    m, p, fd, d0, d1 = _two_units(kernel, 48, ssads=False)
    id0, id1 = d0.bind_iommufd(fd), d1.bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    dirty = fd.hwpt_alloc(id0, ioas, DIRTY)
    expect_errno(errno.EOPNOTSUPP, fd.hwpt_alloc, id1, ioas, DIRTY)
    assert d0.attach_pt(dirty) == dirty
    expect_errno(errno.EINVAL, d1.attach_pt, dirty)
    p.exit()
    assert m.mem.pins.pins == 0


# -- 6.12's first-level DMA domains on a scalable unit -----------------------------------------

@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dma_domains_are_first_level(kernel: str) -> None:
    """6.12 ``first_level_by_default``: with both stages on every unit, a DMA-API domain
    is first-level (a PASID entry of type first-stage over the driver's own table, with
    US and A in every entry and D in writable leaves) and an UNMANAGED one second-level;
    7.0 ``intel_iommu_domain_alloc_paging_flags`` prefers the first stage for any domain
    without NEST_PARENT or DIRTY_TRACKING. A strict unmap sends a P_IOTLB, after which
    the device faults."""
    from iommulab.dma import DmaDirection, dma_map_page, dma_unmap_page
    m = Machine("x86-vtd", kernel=kernel, vtd_scalable=True)
    m.core.strict = True  # iommu.strict=1: the unmap flushes at once
    dev = m.add_pci_device("0000:00:06.0", driver="nvme")
    sm = m.translator.sm

    def pe() -> Any:
        return sm.pasid_cache[(dev.sid, 0)]

    pa = m.mem.alloc_pages(0) << 12
    addr = dma_map_page(dev, pa, 4096, DmaDirection.BIDIRECTIONAL)
    dev.dma_write(addr + 8, b"first")
    assert m.mem.read(pa + 8, 5) == b"first"
    dma_domain: Any = cast(Any, dev.group).default_domain
    assert pe().pgtt == 1 and pe().fsptptr == dma_domain.pgtbl.pgd_pa
    assert dma_domain.geometry.aperture_end == (1 << 47) - 1
    piotlb = sm.counts["PiotlbInv"]
    dma_unmap_page(dev, addr, 4096, DmaDirection.BIDIRECTIONAL)
    assert sm.counts["PiotlbInv"] > piotlb
    with pytest.raises(DmaFault):
        dev.dma_read(addr, 1)
    assert m.faults[-1].reason == 0x71
    m.mem.free_pages(pa >> 12, 0)
    unmanaged = m.driver.domain_alloc_paging(None, DomainType.UNMANAGED)
    assert unmanaged.ops.format.first_level == (kernel == "7.0")
    unmanaged.free()
    parent = m.driver.domain_alloc_paging_flags(None, NEST_PARENT)
    assert not parent.ops.format.first_level
    parent.free()


def test_612_first_level_leaf_and_table_bits() -> None:
    """``pfn_to_dma_pte`` and ``__domain_mapping`` of a first-level domain: tables get
    R|W|US|A, leaves R|US|A plus W|D when writable."""
    m = Machine("x86-vtd", kernel="6.12", vtd_scalable=True)
    dom = m.driver.domain_alloc_paging(None, DomainType.DMA)
    dom.map(0x20_0000, 0x1_0000_0000, 4096, Prot.READ | Prot.WRITE)
    dom.map(0x20_1000, 0x1_0000_1000, 4096, Prot.READ)
    pt = dom.pgtbl
    top = int(pt._pgd[0])
    assert top & 0x27 == 0x27  # P, RW, US, A
    runs = {iova: pte for iova, pte in _leaves(pt)}
    assert runs[0x20_0000] & 0x67 == 0x67 and runs[0x20_1000] & 0x67 == 0x25
    dom.free()


def _leaves(pt: Any) -> list[tuple[int, int]]:
    """(IOVA, entry) of the last-level leaves of a VT-d table (a walk for the test)."""
    out: list[tuple[int, int]] = []

    def walk(table: Any, depth: int, base: int) -> None:
        shift = 12 + 9 * (len(pt.format.levels) - 1 - depth)
        for i in range(512):
            pte = int(table[i])
            if not pte & 3:
                continue
            if depth == len(pt.format.levels) - 1:
                out.append((base + (i << shift), pte))
            else:
                walk(pt._deref(pte), depth + 1, base + (i << shift))

    walk(pt._pgd, 0, 0)
    return out


@pytest.mark.parametrize(("kernel", "pgtt"), [("6.12", 2), ("7.0", 1)])
def test_plain_iommufd_hwpt_stage_by_kernel(kernel: str, pgtt: int) -> None:
    """A HWPT_ALLOC without flags on a scalable unit: 6.12 ``intel_iommu_domain_alloc_user``
    always makes a second stage ("Do not use first stage for user domain translation"),
    7.0 prefers the first stage. DMA goes through either."""
    n = _nest(kernel, parent_flags=0)
    assert n.vdev.attach_pt(n.parent) == n.parent
    n.dev.dma_write(GUEST + 8, b"plain")
    assert n.p.read(n.gpa_to_va(GUEST + 8), 5) == b"plain"
    assert n.sm.pasid_cache[(n.dev.sid, 0)].pgtt == pgtt


def test_descriptor_encodings_match_the_qi_macros() -> None:
    """Golden values from intel/iommu.h's ``QI_*`` macros, worked by hand: IOTLB PSI of
    DID 5 with drains (``qi_desc_iotlb``), a page-selective P_IOTLB (``qi_desc_piotlb``),
    a PASID-selective PASID-cache invalidation, a device context-cache invalidation."""
    from iommulab.drivers.vtd_sm import ContextCacheInv, PasidCacheInv
    assert IotlbInv(3, 5, 0x4000_0000, 2, True, dr=True, dw=True).qwords() == (
        0x5_0000 | 0x80 | 0x40 | 0x30 | 0x2, 0x4000_0000 | 0x40 | 2)
    assert PiotlbInv(3, 7, 0, 0x4000_1000, 0, False).qwords() == (0x7_0000 | 0x30 | 0x6,
                                                                  0x4000_1000)
    assert PiotlbInv(2, 7, 3).qwords() == ((3 << 32) | 0x7_0000 | 0x20 | 0x6, 0)
    assert PasidCacheInv(1, 9, 0).qwords() == (0x9_0000 | 0x10 | 0x7, 0)
    assert ContextCacheInv(3, sid=0x20).qwords() == ((0x20 << 32) | 0x30 | 0x1, 0)


@pytest.mark.parametrize("levels", [4, 5])
def test_large_first_stage_leaves_and_5_level_paging(levels: int) -> None:
    """A 2M first-stage leaf over guest RAM the IOAS maps with 2M second-stage leaves
    (THP backing): one 2M IOTLB entry; with addr_width 57 the unit walks 5 levels
    (FSPM = 1, CAP.FL5LP)."""
    n = _nest()
    ram2m = n.p.mmap(4 << 20, "thp", populate=True)
    gpa = 0x4000_0000
    n.fd.ioas_map(n.ioas, ram2m, 4 << 20, gpa)
    fs = FirstStageBuilder(n.fs.alloc, n.fs.write_u64, levels=levels)
    iova = 1 << 50 if levels == 5 else 0x8000_0000  # 5 levels: an IOVA 4 cannot reach
    fs.map(iova, gpa, 2 << 20)
    hwpt = n.nested(addr_width=48 + 9 * (levels - 4), pgtbl=fs.root)
    n.attach(hwpt)
    n.dev.dma_write(iova + 0x12345, b"big")
    assert n.p.read(ram2m + 0x12345, 3) == b"big"
    assert n.dev.dma_read(iova + 0x1F_F000, 1) == n.p.read(ram2m + 0x1F_F000, 1)
    assert [k[2] for k in n.sm.iotlb] == [2 << 20]
    assert n.sm.pasid_cache[(n.dev.sid, 0)].fspm == levels - 4
