"""Hostile input around VFIO type1 and the memory it maps: device BAR mappings, shmem and
memfd pages unmapped under a pin, MAP_DMA lengths as long as the IOVA space."""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine
from iommulab.iommufd import uapi as iu
from iommulab.vfio import uapi as u
from tests.helpers import expect_errno, make_host, peak_host_bytes

from .vm import Vm

K, M, G = 1 << 10, 1 << 20, 1 << 30
IOVA = 1 << 32



def _used(m: Machine) -> int:
    return m.mem.frames.total_frames - m.mem.frames.free_frames


def test_a_bar_mapping_has_no_pages_and_a_partial_munmap_splits_it() -> None:
    """``vfio_pci_core_mmap`` makes a VM_PFNMAP | VM_IO mapping whose pfns are the BAR's:
    whatever its size no page is allocated, counted, pinned or freed for it. A partial
    munmap splits it (``__split_vma``) into two PFNMAP VMAs that still map the rest of
    the BAR, for the CPU, for MAP_DMA and in a forked child; MAP_PRIVATE of a BAR is
    EINVAL (the region wants VM_SHARED)."""
    m = Machine("x86-vtd", ram="1G")
    dev = m.add_pci_device("0000:00:03.0", bar0_size="64G")
    machine_only = _used(m)
    v = Vm.on(m, bdf=dev.bdf)
    dfd = v.p.ioctl(v.g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:03.0\0"))
    used = _used(m)
    bar = 0

    def mmap() -> None:
        nonlocal bar
        bar = v.p.mmap(64 * G, fd=dfd)

    assert peak_host_bytes(mmap) < 64 * K
    expect_errno(errno.EINVAL, v.p.mmap, 4 * K, fd=dfd, private=True)
    v.p.munmap(bar + 16 * G, 4 * K)
    assert [vma.pfnmap for vma in v.p.mm.vmas] == [True, True] and _used(m) == used
    v.p.write(bar + 16 * G + 4 * K, b"reg")
    assert m.mem.read(dev.bar0 + 16 * G + 4 * K, 3) == b"reg"
    expect_errno(errno.EFAULT, v.p.read, bar + 16 * G, 1)
    v.map(bar + 16 * G + 4 * K, IOVA, 64 * K)
    assert dev.dma_read(IOVA, 3) == b"reg"
    child = v.p.fork()
    assert child.read(bar + 16 * G + 4 * K, 3) == b"reg"
    child.exit()
    v.p.munmap(bar, 64 * G)
    assert v.unmap(IOVA, 64 * K) == 64 * K
    v.p.mm._check()
    m.mem._check()
    assert m.mem.pins.pins == 0
    v.close()
    assert _used(m) == machine_only


@pytest.mark.parametrize("kind", ["shmem", "memfd"])
def test_type1_pins_of_file_pages_munmapped_meanwhile_free_them_on_unmap(kind: str) -> None:
    """Pages of a shared anonymous mapping or a memfd that MAP_DMA pinned, then munmapped
    (and the memfd closed) while mapped for DMA, stay for the device and are freed by
    UNMAP_DMA's unpin, the last reference."""
    v = Vm()
    if kind == "shmem":
        buf = v.p.mmap(M, shared=True)
    else:
        mfd = v.p.memfd_create("guest", M)
        buf = v.p.mmap(M, fd=mfd)
    v.p.write(buf + 8 * K, b"for the device")
    v.map(buf, IOVA, M)
    v.p.munmap(buf, M)
    if kind == "memfd":
        v.p.close(mfd)
    assert v.dev.dma_read(IOVA + 8 * K, 14) == b"for the device"
    held = _used(v.m)
    assert v.unmap(IOVA, M) == M
    assert held - _used(v.m) == 256 and not v.m.mem.orphans.total
    v.m.mem._check()
    v.close()


def test_an_ioas_with_a_domain_frees_a_closed_memfd_page_on_unmap() -> None:
    """The same through iommufd: an IOAS with a domain pins the pages of a memfd mapping;
    after munmap and close, IOMMU_IOAS_UNMAP's unpin frees them."""
    host, _ = make_host("x86-vtd", 1)
    used = _used(host.m)
    cdev, _ = host.bind(0)
    ioas = host.ioas()
    host.attach(cdev, ioas)
    mfd = host.p.memfd_create("guest", M)
    buf = host.p.mmap(M, fd=mfd)
    host.p.write(buf, b"x" * 8192)
    iova = host.map(ioas, buf, M)
    host.p.munmap(buf, M)
    host.p.close(mfd)
    host.ioctl(host.iommufd, iu.IOMMU_IOAS_UNMAP, iu.IOAS_UNMAP.pack(24, ioas, iova, M))
    assert not host.m.mem.orphans.total and host.m.mem.pins.pins == 0
    host.p.exit()
    host.m.mem._check()
    assert _used(host.m) == used


def test_map_dma_of_128_tib_costs_nothing_in_proportion_to_its_length() -> None:
    """``vfio_dma_do_map`` has no size limit of its own: a MAP_DMA of 128 TiB inside the
    IOVA ranges pins from the start until ``vfio_pin_pages_remote`` stops it, at the end
    of what is mapped (EFAULT) or at RLIMIT_MEMLOCK (ENOMEM), and everything is undone;
    the host memory used is in proportion to the pages pinned, not to the length, also
    over a 32 TiB mapping."""
    v = Vm(platform="arm64-smmuv3", memlock=M, ram="1G")
    small = v.p.mmap(M)
    sparse = v.p.mmap(1 << 45, prot="r")
    expect_errno(errno.EFAULT, v.map, small, IOVA, 1 << 47)

    def huge() -> None:
        expect_errno(errno.ENOMEM, v.map, sparse, IOVA, 1 << 47, flags=1)

    assert peak_host_bytes(huge) < 512 * K
    assert v.p.mm.locked_vm == 0 and v.m.mem.pins.pins == 0
    assert v.report().dma_entries == 0 and v.unmap(IOVA, 1 << 47) == 0
    v.close()
    fresh = Machine("arm64-smmuv3", ram="1G")
    fresh.add_pci_device("0000:00:02.0")
    v.m.mem._check()
    assert _used(v.m) == _used(fresh)
