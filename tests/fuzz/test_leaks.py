"""The leak baseline (iommulab.testing.leaks) and the _check() walk
(iommulab.testing.invariants): a clean session leaves nothing, and each kind of leftover is
named."""

from __future__ import annotations

import struct

import pytest

from iommulab import Machine
from iommulab.devices import DmaDevice
from iommulab.iommu import DomainType
from iommulab.iommufd import uapi as iu
from iommulab.testing import LeakSnapshot, check_invariants, leak_snapshot
from iommulab.vfio import uapi as vu
from iommulab.vfio.files import get_file


def _vfio_session(m: Machine, dev: DmaDevice) -> None:
    """Type1 and iommufd on one device: map, attach, DMA, exit."""
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, vu.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1v2_IOMMU)
    va = p.mmap(1 << 21, "thp")
    p.ioctl(c, vu.VFIO_IOMMU_MAP_DMA, bytearray(vu.DMA_MAP.pack(32, 3, va, 1 << 32, 1 << 21)))
    dev.dma_write((1 << 32) + 8, b"fuzz")
    assert p.read(va + 8, 4) == b"fuzz"
    fd = p.open("/dev/iommu")
    buf = bytearray(iu.IOAS_ALLOC.pack(12, 0, 0))
    p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, buf)
    ioas = iu.IOAS_ALLOC.unpack(buf)[2]
    p.ioctl(fd, iu.IOMMU_IOAS_MAP, bytearray(iu.IOAS_MAP.pack(40, 6, ioas, 0, va, 1 << 20, 0)))
    p.exit()


def test_a_clean_session_leaves_the_fresh_machine_snapshot() -> None:
    m = Machine("x86-vtd", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    fresh = leak_snapshot(m)
    assert fresh.pins == fresh.orphan_pages == 0 and not fresh.iommufd_objects
    _vfio_session(m, dev)
    assert fresh.diff(leak_snapshot(m)) == []
    assert check_invariants([m]) > 0


def test_pins_and_pinned_memory_left_behind_are_named() -> None:
    m = Machine("mock", ram="256M")
    p = m.spawn_process()
    fresh = leak_snapshot(m)
    va = p.mmap(4 * 4096, populate=True)
    p.mm.pin_user_pages(va, 4, True)  # a pin nobody drops
    p.mm.pinned_vm += 4
    p.exit()
    diff = fresh.diff(leak_snapshot(m, [p]))
    names = {line.split(":")[0] for line in diff}
    assert names == {"pins", "pinned_frames", "frames_in_use", "orphan_pages", "mm_counters"}
    assert "pins: 4 (fresh machine: 0, +4)" in diff
    assert "mm_counters: process 0 pinned_pages: 4 (fresh: -); process 0 pinned_vm: 4 " \
        "(fresh: -)" in diff


def test_a_context_kept_open_is_named_with_its_objects_and_files() -> None:
    m = Machine("mock", ram="256M")
    p = m.spawn_process()
    fresh = leak_snapshot(m)
    fd = p.open("/dev/iommu")
    p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, bytearray(iu.IOAS_ALLOC.pack(12, 0, 0)))
    f = get_file(p.files[fd])  # a reference nothing drops
    p.exit()
    assert fresh.diff(leak_snapshot(m, [p])) == []  # only the file reaches the context
    assert fresh.diff(leak_snapshot(m, [p], [f])) == [
        "iommufd_objects: Ioas: 1 (fresh: -)", "open_files: IommufdFile: 1 (fresh: -)"]


def test_a_group_off_its_default_domain_and_a_live_domain_are_named() -> None:
    m = Machine("arm64-smmuv3", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    fresh = leak_snapshot(m)
    group = m.core.groups[dev.iommu_group]
    assert dev.dev_iommu is not None
    domain = m.driver.domain_alloc_paging(dev.dev_iommu.priv, DomainType.UNMANAGED)
    m.core.set_group_domain(group, domain)
    assert fresh.groups == {0: "default domain"}
    diff = fresh.diff(leak_snapshot(m))
    assert "groups: 0: on a UNMANAGED domain (fresh: default domain)" in diff
    assert any(line.startswith("domains: ") and "UNMANAGED: 1" in line for line in diff)
    m.core.set_group_domain(group, group.default_domain)
    domain.free()
    assert fresh.diff(leak_snapshot(m)) == []


def test_the_diff_of_equal_snapshots_is_empty_and_names_each_field() -> None:
    a = LeakSnapshot(1, 1, 10, 2, 0, {1000: 3})
    b = LeakSnapshot(1, 1, 12, 2, 0)
    assert a.diff(a) == []
    assert a.diff(b) == ["frames_in_use: 12 (fresh machine: 10, +2)",
                         "locked_vm: 1000: - (fresh: 3)"]


def test_every_check_reachable_from_the_machine_runs() -> None:
    """A broken invariant anywhere under the machine (here the frame allocator's free
    count) fails the walk."""
    m = Machine("ppc64-pseries", ram="256M")
    m.add_pci_device("0000:00:02.0")
    p = m.spawn_process()
    p.mmap(1 << 20, populate=True)
    assert check_invariants([m, p]) >= 4
    m.mem.frames.free_frames -= 1
    with pytest.raises(AssertionError, match="free count"):
        check_invariants([m])
