"""VFIO type1 behaviour the recordings do not cover: runs, accounting, unmap rules, teardown."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from iommulab import Machine, PciDevice
from iommulab.errors import DmaFault
from iommulab.iommu import IommuDomain
from iommulab.vfio import Container
from iommulab.vfio import uapi as u

from .vm import Vm

IOVA = 1 << 32


@pytest.fixture
def vm() -> Iterator[Vm]:
    v = Vm()
    yield v
    v.close()


def test_thp_and_hugetlb_map_as_large_entries(vm: Vm) -> None:
    thp = vm.p.mmap(8 << 20, "thp")
    vm.map(thp, IOVA, 8 << 20)
    assert vm.histogram() == {2 << 20: 4}
    assert vm.p.mm.locked_vm == 2048
    huge = vm.p.mmap(1 << 30, "hugetlb-1G")
    vm.map(huge, 1 << 34, 1 << 30)
    assert vm.histogram() == {2 << 20: 4, 1 << 30: 1}
    assert vm.unmap(0, 0, u.VFIO_DMA_UNMAP_FLAG_ALL) == (8 << 20) + (1 << 30)
    assert vm.histogram() == {} and vm.p.mm.locked_vm == 0


def test_fragmented_memory_and_disable_hugepages_map_4k() -> None:
    v = Vm(disable_hugepages=True)
    thp = v.p.mmap(4 << 20, "thp")
    v.map(thp, IOVA, 4 << 20)
    assert v.histogram() == {4096: 1024}
    v.close()
    frag = Vm()
    frag.m.mem.fragment(order=9)
    buf = frag.p.mmap(4 << 20, "thp")
    frag.map(buf, IOVA, 4 << 20)
    assert 2 << 20 not in frag.histogram()
    frag.m.mem.release_fragmentation()
    frag.close()


def test_device_dma_goes_through_the_mapping_and_faults_outside(vm: Vm) -> None:
    buf = vm.p.mmap(1 << 16, "anon")
    vm.p.write(buf + 0x2000, b"guest")
    vm.map(buf, IOVA, 1 << 16)
    assert vm.dev.dma_read(IOVA + 0x2000, 5) == b"guest"
    vm.dev.dma_write(IOVA + 0x3000, b"device")
    assert vm.p.read(buf + 0x3000, 6) == b"device"
    with pytest.raises(DmaFault):
        vm.dev.dma_read(IOVA + (1 << 16), 1)
    assert vm.m.faults[-1].addr == IOVA + (1 << 16)


def test_memlock_limit_refuses_and_leaves_nothing() -> None:
    v = Vm(memlock=64 << 10)
    buf = v.p.mmap(1 << 20, "anon")
    with pytest.raises(OSError) as err:
        v.map(buf, IOVA, 1 << 20)
    assert err.value.errno == 12
    assert v.p.mm.locked_vm == 0 and v.m.mem.pins.pins == 0
    v.map(buf, IOVA, 64 << 10)  # exactly at the limit
    assert v.p.mm.locked_vm == 16
    v.close()


def test_mmio_bar_is_mapped_but_not_pinned_or_charged() -> None:
    v = Vm(memlock=4096)
    dfd = v.p.ioctl(v.g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0\0"))
    info = bytearray(u.REGION_INFO.pack(32, 0, 0, 0, 0, 0))
    v.p.ioctl(dfd, u.VFIO_DEVICE_GET_REGION_INFO, info)
    _, flags, _, _, size, offset = u.REGION_INFO.unpack(info)
    assert size == 1 << 20 and flags & u.VFIO_REGION_INFO_FLAG_MMAP
    bar = v.p.mmap(size, fd=dfd, offset=offset)
    v.map(bar, IOVA, size)
    assert v.p.mm.locked_vm == 0 and v.m.mem.pins.pins == 0
    assert v.unmap(IOVA, size) == size
    v.p.close(dfd)
    v.close()


def test_v2_refuses_bisection_v1_unmaps_whole_mappings() -> None:
    v2 = Vm()
    buf = v2.p.mmap(1 << 20, "anon")
    v2.map(buf, IOVA, 1 << 16)
    with pytest.raises(OSError) as err:
        v2.unmap(IOVA + 0x1000, 0x1000)
    assert err.value.errno == 22
    with pytest.raises(OSError) as err:  # covers the first page only: bisects at the end
        v2.unmap(IOVA - 0x1000, 0x2000)
    assert err.value.errno == 22
    assert v2.unmap(IOVA - 0x1000, 0x12000) == 1 << 16  # covers it whole
    v2.close()
    v1 = Vm(v2=False)
    buf = v1.p.mmap(1 << 20, "anon")
    v1.map(buf, IOVA, 1 << 16)
    assert v1.unmap(IOVA + 0x1000, 0x1000) == 0  # starts inside: nothing, success
    assert v1.unmap(IOVA, 0x1000) == 1 << 16  # covers the first iova: all of it
    v1.close()


def test_closing_the_group_unmaps_and_unpins_everything(vm: Vm) -> None:
    buf = vm.p.mmap(2 << 20, "thp")
    vm.map(buf, IOVA, 2 << 20)
    vm.p.close(vm.g)
    assert vm.m.mem.pins.pins == 0 and vm.p.mm.locked_vm == 0
    assert vm.dev.group is not None and vm.dev.group.domain is vm.dev.group.default_domain


def test_arm64_machine_maps_through_the_smmu_and_records_the_fault_event() -> None:
    v = Vm(platform="arm64-smmuv3", ram="256M")
    buf = v.p.mmap(2 << 20, "thp")
    v.p.write(buf + 0x1234, b"arm")
    v.map(buf, IOVA, 2 << 20)
    assert v.histogram() == {2 << 20: 1}
    assert v.dev.dma_read(IOVA + 0x1234, 3) == b"arm"
    with pytest.raises(DmaFault):
        v.dev.dma_write(IOVA + (2 << 20), b"x")
    event = v.m.faults[-1]
    assert (event.name, event.sid, event.iova, event.read) == (
        "F_TRANSLATION", v.dev.sid, IOVA + (2 << 20), False)
    v.close()


def _second_group(v: Vm, unit: int) -> tuple[PciDevice, int]:
    dev = v.m.add_pci_device("0000:00:03.0", iommu_unit=unit)
    g = v.p.open(f"/dev/vfio/{dev.iommu_group}")
    v.p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", v.c)))
    return dev, g


def _domains(v: Vm) -> list[IommuDomain]:
    container = v.p.files[v.c]
    assert isinstance(container, Container) and container.iommu is not None
    return [d.domain for d in container.iommu.domains]


def test_a_group_whose_unit_refuses_the_domain_gets_its_own_with_the_mappings_replayed() -> None:
    """A 48-bit domain cannot go onto a 39-bit unit (7.0 paging_domain_compatible; 6.12
    takes it, see tests/drivers/vtd): the second group keeps a new domain, and
    vfio_iommu_replay copies every mapping into it by the runs of the first, without
    pinning again."""
    m = Machine("x86-vtd", ram="512M", kernel="7.0")
    wide = m.add_iommu_unit(aw=48)
    v = Vm.on(m, iommu_unit=wide)
    buf = v.p.mmap(4 << 20, "thp")
    v.p.write(buf + 0x20_0010, b"replayed")
    v.map(buf, IOVA, 4 << 20)
    pins = m.mem.pins.pins
    dev2, _ = _second_group(v, 0)
    second, first = _domains(v)  # newest first: list_add() puts a domain at the head
    assert (first.ops.gaw, second.ops.gaw) == (48, 39)  # type: ignore[union-attr]
    assert second.leaf_runs(IOVA, 4 << 20) == first.leaf_runs(IOVA, 4 << 20)
    assert dev2.dma_read(IOVA + 0x20_0010, 8) == b"replayed"
    assert m.mem.pins.pins == pins and v.report().iopte_bytes == ({2 << 20: 4 << 20},) * 2
    v.map(buf + (2 << 20), IOVA + (8 << 20), 2 << 20)  # new maps go into both
    assert dev2.dma_read(IOVA + (8 << 20) + 0x10, 8) == b"replayed"
    assert v.unmap(0, 0, u.VFIO_DMA_UNMAP_FLAG_ALL) == 6 << 20
    assert first.leaf_histogram() == second.leaf_histogram() == {}
    v.close()


def test_a_snooping_domain_is_not_shared_with_a_unit_without_snoop_control() -> None:
    m = Machine("x86-vtd", ram="512M")
    sc = m.add_iommu_unit(aw=39, snoop_control=True)
    v = Vm.on(m, iommu_unit=sc)
    assert v.p.ioctl(v.c, u.VFIO_CHECK_EXTENSION, u.VFIO_DMA_CC_IOMMU) == 1
    buf = v.p.mmap(1 << 20, "anon")
    v.map(buf, IOVA, 1 << 20)
    (snooping,) = _domains(v)
    assert snooping.pgtbl is not None
    leaves = [pte for _, _, leaf, pte in snooping.pgtbl.iter_entries() if leaf]
    assert leaves and all(pte & 1 << 11 for pte in leaves)  # DMA_PTE_SNP
    _second_group(v, 0)
    plain = _domains(v)[0]
    assert plain.leaf_runs(IOVA, 1 << 20) == snooping.leaf_runs(IOVA, 1 << 20)
    assert v.p.ioctl(v.c, u.VFIO_CHECK_EXTENSION, u.VFIO_DMA_CC_IOMMU) == 0
    v.close()


def test_iommu_units_are_checked() -> None:
    with pytest.raises(ValueError, match="only x86-vtd"):
        Machine("mock", ram="64M").add_iommu_unit()
    m = Machine("x86-vtd", ram="64M")
    with pytest.raises(ValueError, match="aw 65"):
        m.add_iommu_unit(aw=65)
    with pytest.raises(ValueError, match="sagaw 0x1"):
        m.add_iommu_unit(sagaw=1)  # 2-level tables only: the kernel ignores the unit
    with pytest.raises(ValueError, match="iommu_unit 1: the machine has 1"):
        m.add_pci_device("0000:00:04.0", iommu_unit=1)
    assert not m.devices and not m.mem.region_at(0xE000_0000)


def test_munmap_under_a_mapping_keeps_the_pages_until_unmap(vm: Vm) -> None:
    """The IOMMU keeps what was pinned; a new map over the hole fails with EFAULT."""
    buf = vm.p.mmap(4 << 20, "thp")
    vm.p.write(buf + (3 << 20), b"still here")
    vm.map(buf, IOVA, 4 << 20)
    vm.p.munmap(buf + (2 << 20), 2 << 20)
    assert vm.dev.dma_read(IOVA + (3 << 20), 10) == b"still here"
    with pytest.raises(OSError) as err:
        vm.map(buf, IOVA + (8 << 20), 4 << 20)
    assert err.value.errno == 14  # EFAULT: the second half is gone
    frames = vm.m.mem.frames
    used = frames.total_frames - frames.free_frames
    assert vm.unmap(IOVA, 4 << 20) == 4 << 20
    assert frames.total_frames - frames.free_frames <= used - 512  # the cut half is freed
