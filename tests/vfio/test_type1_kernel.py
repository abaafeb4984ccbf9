"""VFIO container, group and type1 rules read from the kernel source (Linux 6.12 and 7.0).

Each test names the kernel function whose rule it checks; where the two releases differ
both sides are tested.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from iommulab import Machine, PciDevice, Process
from iommulab.iommu import DomainType
from iommulab.iommu.domain import IommuDomain
from iommulab.iommu.resv import ResvRegion, ResvType
from iommulab.mem import PhysMem
from iommulab.mem.mm import MmStruct
from iommulab.prot import Prot
from iommulab.vfio import Container, VfioIommu
from iommulab.vfio import uapi as u

from ..helpers import assert_groups_released
from .vm import Vm

IOVA = 1 << 32
MiB = 1 << 20
TASK_SIZE_MAX = (1 << 47) - 4096  # x86_64, 4-level paging
START, STOP, GET_BITMAP = (u.VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
                           u.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
                           u.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)


class Setup:
    """A process with a container and the groups of ``devices``, no IOMMU set yet."""

    def __init__(self, m: Machine, *devices: PciDevice, memlock: int | None = None) -> None:
        self.m = m
        self.p: Process = m.spawn_process(memlock_limit=memlock)
        self.c = self.p.open("/dev/vfio/vfio")
        self.groups = [self.p.open(f"/dev/vfio/{d.iommu_group}") for d in devices]
        for g in self.groups:
            self.p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", self.c)))

    @property
    def iommu(self) -> VfioIommu:
        container = self.p.files[self.c]
        assert isinstance(container, Container) and container.iommu is not None
        return container.iommu

    def close(self) -> None:
        self.p.exit()
        assert self.m.mem.pins.pins == 0 and self.p.mm.locked_vm == 0
        assert_groups_released(self.m)


def _errno(call: Callable[..., object], *args: object, **kwargs: object) -> int:
    with pytest.raises(OSError) as err:
        call(*args, **kwargs)
    return err.value.errno or 0


def _map(p: Process, c: int, vaddr: int, iova: int, size: int, flags: int = 3) -> None:
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, flags, vaddr, iova, size)))


def _dirty(vm: Vm, flags: int) -> None:
    vm.p.ioctl(vm.c, u.VFIO_IOMMU_DIRTY_PAGES, bytearray(u.DIRTY_BITMAP.pack(8, flags)))


def _get_bitmap(vm: Vm, iova: int, size: int, user: int, bsize: int = 8) -> None:
    arg = u.DIRTY_BITMAP.pack(48, GET_BITMAP) + u.DIRTY_BITMAP_GET.pack(iova, size, 4096,
                                                                         bsize, user)
    vm.p.ioctl(vm.c, u.VFIO_IOMMU_DIRTY_PAGES, bytearray(arg))


def _unmap_dirty(vm: Vm, iova: int, size: int, user: int, bsize: int = 8) -> int:
    buf = bytearray(u.DMA_UNMAP.pack(48, u.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, iova, size)
                    + u.BITMAP.pack(4096, bsize, user))
    vm.p.ioctl(vm.c, u.VFIO_IOMMU_UNMAP_DMA, buf)
    return int(u.DMA_UNMAP.unpack(buf[:24])[3])


def _bits(vm: Vm, user: int) -> set[int]:
    word = int.from_bytes(vm.p.read(user, 8), "little")
    return {i for i in range(64) if word >> i & 1}


def _set_word(vm: Vm, user: int, bits: set[int]) -> None:
    vm.p.write(user, sum(1 << i for i in bits).to_bytes(8, "little"))


# -- GET_INFO ---------------------------------------------------------------------------------
def test_get_info_writes_min_of_the_users_argsz_and_the_struct_not_of_the_grown_argsz() -> None:
    """vfio_iommu_type1_get_info: ``minsz = min(info.argsz, sizeof(info))`` is taken
    before argsz grows for the capability chain: argsz 16 writes back 16 bytes only."""
    vm = Vm()
    short = bytearray(struct.pack("<I", 16) + bytes(12))  # a 16-byte buffer
    assert vm.p.ioctl(vm.c, u.VFIO_IOMMU_GET_INFO, short) == 0
    argsz, flags, pgsizes = struct.unpack("<IIQ", short)
    assert (argsz, flags, pgsizes) == (120, 3, 0x40201000)
    padded = bytearray(struct.pack("<I", 16) + bytes(12) + b"\xaa" * 8)
    vm.p.ioctl(vm.c, u.VFIO_IOMMU_GET_INFO, padded)
    assert padded[16:] == b"\xaa" * 8  # cap_offset and pad untouched
    vm.close()


# -- CHECK_EXTENSION / SET_IOMMU ----------------------------------------------------------------
def test_nesting_type_is_an_extension_in_6_12_that_no_modelled_iommu_can_enable() -> None:
    """6.12 vfio_iommu_type1_check_extension answers 1 for VFIO_TYPE1_NESTING_IOMMU and
    SET_IOMMU opens it, but attach calls iommu_enable_nesting(): EINVAL on VT-d (no
    enable_nesting op), EPERM on arm-smmu-v3 (arm_smmu_enable_nesting refuses a domain
    already finalised by domain_alloc_paging(dev)). The group is left as it was."""
    m = Machine("x86-vtd", ram="256M")
    s = Setup(m, m.add_pci_device("0000:00:02.0"))
    assert s.p.ioctl(s.c, u.VFIO_CHECK_EXTENSION, u.VFIO_TYPE1_NESTING_IOMMU) == 1
    assert _errno(s.p.ioctl, s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU) == errno.EINVAL
    assert s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU) == 0
    s.close()
    arm = Machine("arm64-smmuv3", ram="256M")
    s = Setup(arm, arm.add_pci_device("0000:00:02.0"))
    assert _errno(s.p.ioctl, s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU) == errno.EPERM
    s.close()


def test_nesting_type_is_reserved_in_7_0() -> None:
    """7.0 check_extension no longer lists it, so vfio_ioctl_set_iommu skips the type1
    driver for it (``ops->ioctl(NULL, VFIO_CHECK_EXTENSION, arg) <= 0``): ENODEV."""
    m = Machine("x86-vtd", ram="256M", kernel="7.0")
    s = Setup(m, m.add_pci_device("0000:00:02.0"))
    assert s.p.ioctl(s.c, u.VFIO_CHECK_EXTENSION, u.VFIO_TYPE1_NESTING_IOMMU) == 0
    assert _errno(s.p.ioctl, s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU) == errno.ENODEV
    s.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_set_iommu_with_an_extension_that_is_not_a_type_is_einval(kernel: str) -> None:
    """vfio_ioctl_set_iommu asks CHECK_EXTENSION first: VFIO_UNMAP_ALL passes it, and
    vfio_iommu_type1_open then refuses the number (``default: return ERR_PTR(-EINVAL)``);
    VFIO_UPDATE_VADDR answers 0 without an iommu, so no driver takes it (ENODEV)."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    s = Setup(m, m.add_pci_device("0000:00:02.0"))
    assert _errno(s.p.ioctl, s.c, u.VFIO_SET_IOMMU, u.VFIO_UNMAP_ALL) == errno.EINVAL
    assert _errno(s.p.ioctl, s.c, u.VFIO_SET_IOMMU, u.VFIO_UPDATE_VADDR) == errno.ENODEV
    s.close()


# -- group ioctls -----------------------------------------------------------------------------
def test_set_container_with_fd_minus_one_is_ebadf() -> None:
    """vfio_group_ioctl_set_container: ``CLASS(fd, f)(fd); if (fd_empty(f)) return -EBADF``
    (6.12: ``fdget``): a negative fd is simply not open."""
    m = Machine("x86-vtd", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process()
    g = p.open(f"/dev/vfio/{dev.iommu_group}")
    assert _errno(p.ioctl, g, u.VFIO_GROUP_SET_CONTAINER,
                  bytearray(struct.pack("<i", -1))) == errno.EBADF
    p.exit()


def test_get_device_fd_looks_the_name_up_before_asking_for_an_iommu() -> None:
    """vfio_group_ioctl_get_device_fd: vfio_device_get_from_name (ENODEV) comes before
    vfio_df_group_open's ``!vfio_group_has_iommu`` (EINVAL)."""
    m = Machine("x86-vtd", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process()
    g = p.open(f"/dev/vfio/{dev.iommu_group}")
    assert _errno(p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:09.0\0") == errno.ENODEV
    assert _errno(p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:02.0\0") == errno.EINVAL
    p.exit()


def test_closing_the_container_fd_leaves_the_group_in_it() -> None:
    """vfio_fops_release only puts the file's reference: a group holds the container
    (vfio_container_get in vfio_container_attach_group), so after the container fd is
    closed the group still has it, DMA still goes through the mappings, and only the
    group leaving (UNSET_CONTAINER or its close) tears them down."""
    vm = Vm()
    buf = vm.p.mmap(MiB)
    vm.p.write(buf, b"kept")
    vm.map(buf, IOVA, MiB)
    vm.p.close(vm.c)
    status = bytearray(u.GROUP_STATUS.pack(8, 0))
    vm.p.ioctl(vm.g, u.VFIO_GROUP_GET_STATUS, status)
    assert u.GROUP_STATUS.unpack(status)[1] == (u.VFIO_GROUP_FLAGS_VIABLE |
                                                u.VFIO_GROUP_FLAGS_CONTAINER_SET)
    assert vm.dev.dma_read(IOVA, 4) == b"kept" and vm.p.mm.locked_vm == 256
    vm.p.ioctl(vm.g, u.VFIO_GROUP_UNSET_CONTAINER)
    assert vm.p.mm.locked_vm == 0 and vm.m.mem.pins.pins == 0
    vm.close()


# -- attach, detach and the IOVA list -----------------------------------------------------------
def test_a_domain_that_goes_gives_its_aperture_back() -> None:
    """vfio_iommu_type1_detach_group: when a group's domain goes, vfio_iommu_aper_expand
    widens the IOVA list to the smallest aperture left, so a 48-bit container that had a
    39-bit group maps above 2^39 again once that group leaves. (7.0: the 39-bit group
    cannot join the 48-bit domain, paging_domain_compatible refuses it.)"""
    m = Machine("x86-vtd", ram="512M", kernel="7.0")
    wide = m.add_iommu_unit(aw=48)
    s = Setup(m, m.add_pci_device("0000:00:02.0", iommu_unit=wide))
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    narrow = m.add_pci_device("0000:00:03.0")
    g39 = s.p.open(f"/dev/vfio/{narrow.iommu_group}")
    s.p.ioctl(g39, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", s.c)))
    assert s.iommu.iova_list[-1][1] == (1 << 39) - 1
    buf = s.p.mmap(MiB)
    assert _errno(_map, s.p, s.c, buf, 1 << 40, MiB) == errno.EINVAL
    s.p.close(g39)
    assert s.iommu.iova_list[-1][1] == (1 << 48) - 1
    _map(s.p, s.c, buf, 1 << 40, MiB)
    s.close()


def test_set_iommu_attaches_the_newest_group_first() -> None:
    """vfio_container_attach_group ``list_add``s a group at the head of the container's
    list and __vfio_container_attach_groups walks it from there; type1 likewise puts a
    new domain at the head. So of a 39-bit and a later 48-bit group, the 48-bit one gets
    the first domain, the 39-bit one cannot join it (7.0) and gets its own: when it
    leaves, the 48-bit aperture comes back."""
    m = Machine("x86-vtd", ram="512M", kernel="7.0")
    wide = m.add_iommu_unit(aw=48)
    narrow_dev = m.add_pci_device("0000:00:02.0")
    s = Setup(m, narrow_dev, m.add_pci_device("0000:00:03.0", iommu_unit=wide))
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    gaws = [d.domain.ops.gaw for d in s.iommu.domains]  # type: ignore[union-attr]
    assert gaws == [39, 48]  # newest first: the 39-bit domain came last
    s.p.close(s.groups[0])
    _map(s.p, s.c, s.p.mmap(MiB), 1 << 40, MiB)
    s.close()


def test_612_a_narrow_group_narrows_the_domain_it_joins_for_good() -> None:
    """6.12: type1 moves the 39-bit group onto the 48-bit group's domain (an empty domain
    passes prepare_domain_attach_device's max_addr check), which sets the domain's gaw to
    39 and knocks out its top level; nothing widens it again, so after the 39-bit group
    leaves vfio_iommu_aper_expand still finds a 39-bit aperture."""
    m = Machine("x86-vtd", ram="512M")
    wide = m.add_iommu_unit(aw=48)
    s = Setup(m, m.add_pci_device("0000:00:02.0"),
              m.add_pci_device("0000:00:03.0", iommu_unit=wide))
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    assert [d.domain.ops.gaw for d in s.iommu.domains] == [39]  # type: ignore[union-attr]
    s.p.close(s.groups[0])
    assert s.iommu.iova_list[-1][1] == (1 << 39) - 1
    buf = s.p.mmap(MiB)
    assert _errno(_map, s.p, s.c, buf, 1 << 40, MiB) == errno.EINVAL
    s.close()


def test_reserved_regions_of_a_group_that_left_are_valid_iovas_again() -> None:
    """vfio_iommu_resv_refresh runs on every detach: the list is rebuilt from the
    reserved regions of the groups still attached, even when the domain stays."""
    m = Machine("x86-vtd", ram="512M")
    quirky, plain = m.add_pci_device("0000:00:02.0"), m.add_pci_device("0000:00:03.0")
    quirky.firmware_resv = [ResvRegion(0x1000_0000, MiB, Prot.READ | Prot.WRITE,
                                       ResvType.RESERVED)]
    s = Setup(m, quirky, plain)
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    assert len(s.iommu.domains) == 1  # the second group joined the first domain
    buf = s.p.mmap(MiB)
    assert _errno(_map, s.p, s.c, buf, 0x1000_0000, MiB) == errno.EINVAL
    s.p.close(s.groups[0])
    _map(s.p, s.c, buf, 0x1000_0000, MiB)
    s.close()


def test_a_hardware_msi_region_takes_precedence_over_the_software_one() -> None:
    """vfio_iommu_has_sw_msi: any IOMMU_RESV_MSI region means no MSI cookie, even with the
    driver's IOMMU_RESV_SW_MSI window."""
    m = Machine("arm64-smmuv3", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    dev.firmware_resv = [ResvRegion(0x1000_0000, MiB, Prot.WRITE | Prot.MMIO, ResvType.MSI)]
    s = Setup(m, dev)
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    assert s.iommu.domains[0].domain.cookie is None
    s.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_6_12_probes_a_new_domain_for_fine_grained_superpages(kernel: str) -> None:
    """6.12 vfio_test_domain_fgsp maps two pages at the first 8K-aligned valid IOVA of a
    new domain and unmaps them a page at a time (VT-d has no 8K page: fgsp stays off);
    7.0 removed the probe."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    s = Setup(m, m.add_pci_device("0000:00:02.0"))
    s.p.ioctl(s.c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    (vd,) = s.iommu.domains
    stats = vd.domain.tlb_stats
    assert (stats.add_page, stats.iotlb_sync) == ((2, 2) if kernel == "6.12" else (0, 0))
    assert vd.domain.leaf_histogram() == {}
    s.close()


# -- MAP_DMA ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_a_range_that_wraps_is_eoverflow_in_7_0(kernel: str) -> None:
    """7.0 vfio_dma_do_map / vfio_dma_do_unmap / vfio_iommu_type1_dirty_pages use
    check_add_overflow(): EOVERFLOW, checked in MAP before the flags and the alignment;
    6.12 answers EINVAL (and checks the flags first)."""
    vm = Vm(ram="256M", machine=Machine("x86-vtd", ram="256M", kernel=kernel))
    top = (1 << 64) - 0x1000
    want = errno.EOVERFLOW if kernel == "7.0" else errno.EINVAL
    assert _errno(vm.map, 0x10000, top, 0x2000) == want
    assert _errno(vm.map, top, 0x10000, 0x2000) == want  # the vaddr wraps
    assert _errno(vm.map, 0x10000, top + 0x800, 0x2000, 0) == want  # unaligned, no flags
    assert _errno(vm.map, 0x10000, 0, 0, 0) == errno.EINVAL  # size 0
    assert _errno(vm.unmap, top, 0x2000) == want
    _dirty(vm, START)
    user = vm.p.mmap(4096)
    assert _errno(_get_bitmap, vm, top, 0x2000, user) == want
    # a range ending exactly at 2^64: 6.12's ``iova + size < iova`` wraps, 7.0's
    # check_add_overflow(iova, size - 1) does not
    if kernel == "7.0":
        _get_bitmap(vm, top - 0x1000, 0x2000, user)
    else:
        assert _errno(_get_bitmap, vm, top - 0x1000, 0x2000, user) == errno.EINVAL
    vm.close()


# -- dirty pages -------------------------------------------------------------------------------
def test_dirty_pages_without_a_flag_is_einval() -> None:
    """vfio_iommu_type1_dirty_pages: exactly one of START, STOP, GET_BITMAP; with none,
    every branch is skipped and the function ends in ``return -EINVAL``."""
    vm = Vm()
    assert _errno(_dirty, vm, 0) == errno.EINVAL
    assert _errno(_dirty, vm, START | STOP) == errno.EINVAL
    _dirty(vm, STOP)  # STOP without START is fine
    vm.close()


def test_an_unmapped_bitmap_faults_in_the_copy_not_in_access_ok() -> None:
    """access_ok() only checks that the range is user space (EINVAL past TASK_SIZE_MAX);
    update_user_bitmap's copy_to_user of an unmapped bitmap is EFAULT, and the mapping
    stays, in VFIO_IOMMU_UNMAP_DMA and in DIRTY_PAGES GET_BITMAP."""
    vm = Vm()
    buf = vm.p.mmap(MiB)
    vm.map(buf, IOVA, MiB)
    _dirty(vm, START)
    gone = vm.p.mmap(4096)
    vm.p.munmap(gone, 4096)
    assert _errno(_unmap_dirty, vm, IOVA, MiB, gone, 32) == errno.EFAULT
    assert _errno(_get_bitmap, vm, IOVA, MiB, gone, 32) == errno.EFAULT
    assert _errno(_get_bitmap, vm, IOVA, MiB, TASK_SIZE_MAX - 16, 32) == errno.EINVAL
    assert vm.unmap(IOVA, MiB) == MiB  # still mapped until now
    vm.close()


def test_a_bitmap_straddling_into_unmapped_memory_is_written_up_to_the_fault() -> None:
    """copy_to_user stops at the first page it cannot write: the words before it are
    written, and the ioctl fails with EFAULT."""
    vm = Vm()
    buf = vm.p.mmap(2 * MiB)
    vm.map(buf, IOVA, 2 * MiB)  # 512 pages: 64 bytes of bitmap
    _dirty(vm, START)
    user = vm.p.mmap(2 * 4096)
    vm.p.munmap(user + 4096, 4096)
    assert _errno(_get_bitmap, vm, IOVA, 2 * MiB, user + 4096 - 32, 64) == errno.EFAULT
    assert vm.p.read(user + 4096 - 32, 32) == b"\xff" * 32
    vm.close()


def test_update_user_bitmap_keeps_the_bits_it_shifted_past_a_mapping() -> None:
    """update_user_bitmap shifts dma->bitmap in place when the report's base IOVA is
    below the mapping and ORs in the user's word at the seam; vfio_iova_dirty_bitmap then
    clears only the mapping's nbits. A GET_BITMAP over two mappings leaves the first
    one's bits in the second's bitmap: reporting the second alone (an unmap with its
    bitmap) then shows 8 dirty pages for a 4-page mapping."""
    vm = Vm()
    buf = vm.p.mmap(MiB)
    vm.map(buf, IOVA, 0x4000)
    vm.map(buf + 0x4000, IOVA + 0x4000, 0x4000)
    _dirty(vm, START)
    user = vm.p.mmap(4096)
    _get_bitmap(vm, IOVA, 0x8000, user)
    assert _bits(vm, user) == set(range(8))
    _set_word(vm, user, set())
    assert _unmap_dirty(vm, IOVA + 0x4000, 0x4000, user) == 0x4000
    assert _bits(vm, user) == set(range(8))  # pages 4-7 are past the mapping
    vm.close()


def test_shifted_bits_compound_and_what_passes_the_last_word_is_lost() -> None:
    """The stale bits walk: each report with a shift moves the kept bits further up
    (bitmap_shift_left over ``nbits + shift`` bits rounded up to whole words, so bits
    shifted past that word are dropped); the user's own bits at the seam are ORed in and
    kept too; a report without a shift copies whole words, overwriting the user's."""
    vm = Vm()
    buf = vm.p.mmap(MiB)
    vm.map(buf, IOVA + 0x10000, 0x4000)  # 4 pages, 16 pages above the report's base
    _dirty(vm, START)
    user = vm.p.mmap(4096)
    _set_word(vm, user, {40})  # a bit the user did not clear
    _get_bitmap(vm, IOVA, 0x20000, user)
    assert _bits(vm, user) == {16, 17, 18, 19, 40}
    _set_word(vm, user, set())
    _get_bitmap(vm, IOVA, 0x20000, user)
    assert _bits(vm, user) == {16, 17, 18, 19, 32, 33, 34, 35, 56}
    _set_word(vm, user, set())
    _get_bitmap(vm, IOVA, 0x20000, user)  # 56 + 16 is past the word: gone
    assert _bits(vm, user) == {16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51}
    _set_word(vm, user, {60})
    assert _unmap_dirty(vm, IOVA + 0x10000, 0x4000, user) == 0x4000
    assert _bits(vm, user) == {0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51}
    vm.close()


def test_stop_and_start_give_fresh_bitmaps() -> None:
    """STOP frees the bitmaps (vfio_dma_bitmap_free_all), START allocates zeroed ones."""
    vm = Vm()
    buf = vm.p.mmap(MiB)
    vm.map(buf, IOVA + 0x10000, 0x4000)
    _dirty(vm, START)
    user = vm.p.mmap(4096)
    _get_bitmap(vm, IOVA, 0x20000, user)
    _dirty(vm, STOP)
    _dirty(vm, START)
    _set_word(vm, user, set())
    assert _unmap_dirty(vm, IOVA + 0x10000, 0x4000, user) == 0x4000
    assert _bits(vm, user) == {0, 1, 2, 3}
    vm.close()


@dataclass
class _Task:
    """A process as type1 sees it (:class:`iommulab.vfio.type1.Task`), without a machine."""

    mm: MmStruct
    memlock_limit: int | None = None
    cap_ipc_lock: bool = False


def _domainless(limit_ram: str = "64M") -> tuple[VfioIommu, _Task]:
    """A type1 IOMMU with no domain yet (as with only emulated groups): MAP_DMA records
    the mapping and pins nothing."""
    return VfioIommu(True, 65535, False), _Task(MmStruct(PhysMem(limit_ram)))


def test_a_dirty_bitmap_of_more_than_int_max_pages_is_einval() -> None:
    """vfio_dma_bitmap_alloc: ``npages > DIRTY_BITMAP_PAGES_MAX`` (INT_MAX) is EINVAL,
    at MAP_DMA under tracking (the mapping is removed) and at START (no bitmap stays,
    tracking stays off)."""
    iommu, task = _domainless()
    huge = (u.DIRTY_BITMAP_PAGES_MAX + 1) << 12
    iommu.set_dirty_tracking(True)
    assert _errno(iommu.map_dma, task, 3, 1 << 40, 1 << 44, huge) == errno.EINVAL
    assert not iommu.dmas and iommu.dma_avail == 65535
    iommu.set_dirty_tracking(False)
    iommu.map_dma(task, 3, 0, 0, 1 << 20)
    iommu.map_dma(task, 3, 1 << 40, 1 << 44, huge)
    assert _errno(iommu.set_dirty_tracking, True) == errno.EINVAL
    assert not iommu.dirty_page_tracking and all(d.bitmap is None for d in iommu.dmas)
    iommu._check()


class _Replay:
    """A type1 IOMMU (driven directly: no ioctl makes a mapping without a domain) whose
    mapping of ``MiB`` at IOVA was made by ``mapper`` before the device's group, on a
    new paging domain, is attached."""

    def __init__(self, mapper: Process) -> None:
        self.m = mapper.machine
        self.dev = self.m.add_pci_device("0000:00:02.0")
        self.iommu = VfioIommu(True, 65535, False)
        self.buf = mapper.mmap(MiB)
        mapper.write(self.buf, b"mapper's")
        self.iommu.map_dma(mapper, 3, self.buf, IOVA, MiB)
        self.group = self.m.core.groups[self.dev.iommu_group]
        assert self.dev.dev_iommu is not None
        self.domain = self.m.core.driver.domain_alloc_paging(self.dev.dev_iommu.priv,
                                                             DomainType.UNMANAGED)
        self.m.core.set_group_domain(self.group, self.domain)

    def attach(self, current: Process) -> IommuDomain:
        return self.iommu.attach_group(self.group, self.domain, msi_isolated=True,
                                       enforce_cc=False, current=current)

    def refused(self, current: Process) -> int:
        """The attach fails; nothing is pinned, charged or mapped."""
        err = _errno(self.attach, current)
        assert not self.iommu.domains and not self.iommu.iova_list
        assert self.m.mem.pins.pins == 0 and self.domain.leaf_histogram() == {}
        assert self.iommu.dmas[0].locked_vm == 0 and not self.iommu.dmas[0].iommu_mapped
        return err

    def close(self) -> None:
        attached = bool(self.iommu.domains)
        assert self.iommu.unmap_dma(0, IOVA, MiB) == MiB
        self.iommu._check()
        if attached:
            assert self.iommu.detach_group(self.group) is self.domain
        assert self.group.default_domain is not None
        self.m.core.set_group_domain(self.group, self.group.default_domain)
        self.domain.free()
        assert self.m.mem.pins.pins == 0


def test_replay_pins_under_the_attaching_process_memlock_limit() -> None:
    """vfio_iommu_replay pins a mapping made without a domain with vfio_pin_pages_remote
    under ``rlimit(RLIMIT_MEMLOCK)`` of ``current``, the process attaching: ENOMEM over
    it, and the attach changes nothing; under it the pages are charged to the mapper."""
    m = Machine("x86-vtd", ram="256M")
    p = m.spawn_process()
    r = _Replay(p)
    child = p.fork()  # the same memory at the same address, its own limit
    child.memlock_limit = 64 << 10
    assert r.refused(child) == errno.ENOMEM
    assert p.mm.locked_vm == child.mm.locked_vm == 0
    assert r.attach(p) is r.domain
    assert p.mm.locked_vm == 256 and r.domain.leaf_histogram() == {4096: 256}
    r.close()
    assert p.mm.locked_vm == 0
    child.exit()
    p.exit()


def test_replay_pins_from_the_attaching_process_address_space() -> None:
    """vfio_pin_pages_remote pins from ``current->mm``: a replay by another process maps
    the pages that process has at the mapping's vaddr (faulting them in there), not the
    mapper's, and vfio_lock_acct charges them to the mapping's mm (``dma->mm``), not to
    the process that pinned them."""
    m = Machine("x86-vtd", ram="256M")
    p = m.spawn_process()
    r = _Replay(p)
    other = m.spawn_process()
    assert other.mmap(MiB) == r.buf
    other.write(r.buf, b"attacher")
    r.attach(other)
    assert r.dev.dma_read(IOVA, 8) == b"attacher"
    assert (p.mm.locked_vm, other.mm.locked_vm) == (256, 0)
    assert r.iommu.report().locked_vm == 256
    r.close()
    assert p.mm.locked_vm == 0 and p.read(r.buf, 8) == b"mapper's"
    free = m.mem.frames.free_frames
    other.exit()
    assert m.mem.frames.free_frames == free + 256  # unpinned: they go with the attacher
    p.exit()


def test_replay_by_a_process_without_the_memory_is_efault() -> None:
    """vaddr_get_pfns of ``current->mm``: nothing mapped at the mapping's vaddr in the
    attaching process is EFAULT, even though the mapper has it."""
    m = Machine("x86-vtd", ram="256M")
    p = m.spawn_process()
    r = _Replay(p)
    other = m.spawn_process()
    assert r.refused(other) == errno.EFAULT
    assert r.attach(p) is r.domain
    r.close()
    other.exit()
    p.exit()


def test_replay_charges_the_mapper_under_its_own_limit() -> None:
    """vfio_lock_acct ends in ``__account_locked_vm(dma->mm, ..., dma->task,
    dma->lock_cap)``: the pages the attaching process may pin are still refused (ENOMEM,
    unpinned) when they take the mapper's locked_vm past the mapper's RLIMIT_MEMLOCK."""
    m = Machine("x86-vtd", ram="256M")
    p = m.spawn_process(memlock_limit=64 << 10)
    r = _Replay(p)  # nothing pinned yet: the mapping was within any limit
    child = p.fork()
    child.memlock_limit = None
    assert r.refused(child) == errno.ENOMEM
    assert p.mm.locked_vm == child.mm.locked_vm == 0
    p.memlock_limit = MiB  # setrlimit: dma->task's limit is read when charging
    assert r.attach(child) is r.domain and p.mm.locked_vm == 256
    r.close()
    child.exit()
    p.exit()


def test_replay_bypasses_the_limits_with_the_mappers_cap_ipc_lock() -> None:
    """vfio_pin_pages_remote and vfio_lock_acct both test ``dma->lock_cap``, the
    mapper's CAP_IPC_LOCK at MAP_DMA: with it no limit applies whoever attaches;
    without it the attaching process's own CAP_IPC_LOCK does not lift its limit."""
    m = Machine("x86-vtd", ram="256M")
    capped = m.spawn_process(memlock_limit=0, cap_ipc_lock=True)
    r = _Replay(capped)
    child = capped.fork()
    child.cap_ipc_lock = False
    assert r.attach(child) is r.domain and capped.mm.locked_vm == 256
    r.close()
    child.exit()
    capped.exit()
    m = Machine("x86-vtd", ram="256M")
    p = m.spawn_process()
    r = _Replay(p)
    child = p.fork()
    child.memlock_limit, child.cap_ipc_lock = 64 << 10, True
    assert r.refused(child) == errno.ENOMEM
    r.close()
    child.exit()
    p.exit()


# -- pinning: batches, limits, PFNMAP ----------------------------------------------------------
def _faulted(vm: Vm, addr: int) -> int:
    vma = vm.p.mm.find_vma(addr)
    assert vma is not None
    return int(np.count_nonzero(vma.pfns() >= 0))


@pytest.mark.parametrize(("kernel", "disable_hugepages", "used", "faulted"), [
    ("6.12", False, 0, 4608), ("7.0", False, 0, 4608), ("6.12", True, 0, 4097),
    ("6.12", False, 256, 4096)])
def test_map_over_the_memlock_limit_faults_in_only_the_batches_the_kernel_pins(
        kernel: str, disable_hugepages: bool, used: int, faulted: int) -> None:
    """vfio_pin_pages_remote fills a 512-entry batch with pin_user_pages_remote (one
    entry with disable_hugepages) and checks RLIMIT_MEMLOCK as it consumes the batch
    (6.12 per page, 7.0 per contiguous chunk): 512 MiB over a 16 MiB limit is ENOMEM
    once the batch holding page 4097 of the budget is pinned, not after faulting in all
    131072 pages."""
    v = Vm(memlock=16 * MiB, disable_hugepages=disable_hugepages,
           machine=Machine("x86-vtd", ram="2G", kernel=kernel))
    if used:
        v.map(v.p.mmap(used * 4096), IOVA, used * 4096)
    buf = v.p.mmap(512 * MiB)
    assert _errno(v.map, buf, IOVA + (1 << 30), 512 * MiB) == errno.ENOMEM
    assert _faulted(v, buf) == faulted
    assert v.p.mm.locked_vm == used and v.m.mem.pins.pins == used
    v.close()


def test_a_map_that_fits_the_limit_pins_everything_by_runs() -> None:
    """Under the limit nothing changes: the whole range is pinned and mapped by runs."""
    v = Vm(memlock=16 * MiB)
    buf = v.p.mmap(16 * MiB, "thp")
    v.map(buf, IOVA, 16 * MiB)
    assert v.histogram() == {2 * MiB: 8} and v.p.mm.locked_vm == 4096
    v.close()


def _bar(v: Vm, prot: str) -> tuple[int, int, int]:
    dfd = v.p.ioctl(v.g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0\0"))
    info = bytearray(u.REGION_INFO.pack(32, 0, 0, 0, 0, 0))
    v.p.ioctl(dfd, u.VFIO_DEVICE_GET_REGION_INFO, info)
    size, offset = u.REGION_INFO.unpack(info)[4:6]
    return dfd, v.p.mmap(size, fd=dfd, offset=offset, prot=prot), size


def test_a_writable_map_of_a_read_only_pfnmap_is_efault() -> None:
    """follow_fault_pfn: ``if (write_fault && !args.writable) ret = -EFAULT``: MAP_DMA with
    WRITE of a BAR mmapped read-only fails; READ alone maps it."""
    v = Vm()
    dfd, bar, size = _bar(v, "r")
    assert _errno(v.map, bar, IOVA, size) == errno.EFAULT
    v.map(bar, IOVA, size, u.VFIO_DMA_MAP_FLAG_READ)
    assert v.unmap(IOVA, size) == size
    v.p.close(dfd)
    v.close()


def test_disable_hugepages_maps_a_pfnmap_a_page_per_call_too() -> None:
    """vfio_pin_pages_remote with disable_hugepages takes one page per call (6.12 breaks
    out after its one-entry batch, 7.0 sets ``npage = 1``), PFNMAP pages included: one
    iommu_map per page of a BAR."""
    v = Vm(disable_hugepages=True)
    dfd, bar, size = _bar(v, "rw")
    v.map(bar, IOVA, size)
    assert v.report().iommu_map_calls == size >> 12 and v.histogram() == {4096: size >> 12}
    assert v.unmap(IOVA, size) == size
    v.p.close(dfd)
    v.close()


def test_vaddr_update_charges_the_new_owner_under_its_limit() -> None:
    """vfio_change_dma_owner: ``mm_lock_acct(task, mm, lock_cap, npage)`` charges the new
    process's mm first, so a new owner whose RLIMIT_MEMLOCK is below the mapping gets
    ENOMEM and nothing moves (the mapping stays with an invalid vaddr)."""
    v = Vm()
    buf = v.p.mmap(32 * MiB)
    v.map(buf, IOVA, 32 * MiB)
    assert v.unmap(IOVA, 32 * MiB, u.VFIO_DMA_UNMAP_FLAG_VADDR) == 32 * MiB
    child = v.p.fork()
    child.memlock_limit = 16 * MiB
    arg = bytearray(u.DMA_MAP.pack(32, u.VFIO_DMA_MAP_FLAG_VADDR, buf, IOVA, 32 * MiB))
    assert _errno(child.ioctl, v.c, u.VFIO_IOMMU_MAP_DMA, arg) == errno.ENOMEM
    assert (v.p.mm.locked_vm, child.mm.locked_vm) == (8192, 0)
    child.memlock_limit = 32 * MiB
    child.ioctl(v.c, u.VFIO_IOMMU_MAP_DMA, arg)
    assert (v.p.mm.locked_vm, child.mm.locked_vm) == (0, 8192)
    assert v.unmap(IOVA, 32 * MiB) == 32 * MiB and child.mm.locked_vm == 0
    child.exit()
    v.close()


def test_pages_munmapped_under_a_mapping_are_freed_by_the_new_owners_unpin() -> None:
    """unpin_user_pages frees a page whose last pin goes, whoever pinned it: after a VADDR
    update moved the mapping to another process, its unmap frees the pages the first
    process munmapped while they were pinned."""
    v = Vm()
    frames = v.m.mem.frames
    free = frames.free_frames
    buf = v.p.mmap(4 * MiB)
    v.map(buf, IOVA, 4 * MiB)
    v.unmap(IOVA, 4 * MiB, u.VFIO_DMA_UNMAP_FLAG_VADDR)
    child = v.p.fork()
    v.p.munmap(buf, 4 * MiB)  # pinned: the pages stay until their last unpin
    child.ioctl(v.c, u.VFIO_IOMMU_MAP_DMA,
                bytearray(u.DMA_MAP.pack(32, u.VFIO_DMA_MAP_FLAG_VADDR, buf, IOVA, 4 * MiB)))
    assert v.unmap(IOVA, 4 * MiB) == 4 * MiB
    child.exit()
    v.close()
    assert frames.free_frames >= free  # the domain's tables went with the container
