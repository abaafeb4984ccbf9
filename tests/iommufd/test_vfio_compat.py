"""The VFIO compatibility container on /dev/iommu: the selftest's iommufd VFIO cases and the
vfio_compat_mock_domain group (reference §2.17 cases 42-52), then a legacy VMM (group,
SET_CONTAINER, SET_IOMMU, device fd, MAP_DMA) running on iommufd through /dev/vfio/vfio
with CONFIG_IOMMUFD_VFIO_CONTAINER, and the documented differences from real type1."""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Iterator

import pytest

from iommulab import Machine
from iommulab.iommufd import uapi as u
from iommulab.vfio import uapi as v

from ..helpers import expect_errno
from ..vfio.vm import Vm
from .selftest_lib import (
    BUFFER_SIZE,
    HUGEPAGE_SIZE,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    PAGE_SIZE,
    Selftest,
)

VFIO_IOAS = struct.Struct("<IIHH")  # size, ioas_id, op, __reserved


@pytest.fixture
def t() -> Iterator[Selftest]:
    st = Selftest()
    yield st
    st.close()


def vfio_ioas(t: Selftest, op: int, ioas_id: int = 0) -> int:
    out = t.ioctl(u.IOMMU_VFIO_IOAS, VFIO_IOAS.pack(12, ioas_id, op, 0))
    return int(VFIO_IOAS.unpack(out)[1])


# -- FIXTURE(iommufd): the VFIO ioctls without a compat IOAS ---------------------------------
def test_simple_ioctls(t: Selftest) -> None:
    assert t.p.ioctl(t.fd, v.VFIO_GET_API_VERSION) == v.VFIO_API_VERSION
    assert t.p.ioctl(t.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_TYPE1v2_IOMMU) == 1


def test_unmap_cmd(t: Selftest) -> None:
    def unmap(argsz: int, flags: int) -> None:
        t.ioctl(v.VFIO_IOMMU_UNMAP_DMA, v.DMA_UNMAP.pack(argsz, flags, MOCK_APERTURE_START,
                                                         PAGE_SIZE))
    expect_errno(errno.EINVAL, unmap, 1, 0)
    expect_errno(errno.EINVAL, unmap, 24, 1 << 31)
    expect_errno(errno.ENODEV, unmap, 24, 0)


def test_map_cmd(t: Selftest) -> None:
    def map_(argsz: int, flags: int) -> None:
        t.ioctl(v.VFIO_IOMMU_MAP_DMA, v.DMA_MAP.pack(argsz, flags, t.buffer,
                                                     MOCK_APERTURE_START, PAGE_SIZE))
    expect_errno(errno.EINVAL, map_, 1, 0)
    expect_errno(errno.EINVAL, map_, 32, 1 << 31)
    expect_errno(errno.ENODEV, map_, 32, 3)  # needs a domain attached


def test_info_cmd(t: Selftest) -> None:
    expect_errno(errno.EINVAL, t.ioctl, v.VFIO_IOMMU_GET_INFO, v.IOMMU_INFO.pack(1, 0, 0, 0, 0))
    expect_errno(errno.ENODEV, t.ioctl, v.VFIO_IOMMU_GET_INFO,
                 v.IOMMU_INFO.pack(24, 0, 0, 0, 0))


def test_set_iommu_cmd(t: Selftest) -> None:
    for version in (v.VFIO_TYPE1v2_IOMMU, v.VFIO_TYPE1_IOMMU):
        expect_errno(errno.ENODEV, t.p.ioctl, t.fd, v.VFIO_SET_IOMMU, version)


def test_vfio_ioas(t: Selftest) -> None:
    expect_errno(errno.ENODEV, vfio_ioas, t, u.IOMMU_VFIO_IOAS_GET)
    expect_errno(errno.ENOENT, vfio_ioas, t, u.IOMMU_VFIO_IOAS_SET, 0)
    ioas = t.ioas_alloc()
    vfio_ioas(t, u.IOMMU_VFIO_IOAS_SET, ioas)
    assert vfio_ioas(t, u.IOMMU_VFIO_IOAS_GET) == ioas
    vfio_ioas(t, u.IOMMU_VFIO_IOAS_CLEAR)
    expect_errno(errno.ENODEV, vfio_ioas, t, u.IOMMU_VFIO_IOAS_GET)


def test_unknown_and_dirty_pages_are_enotty(t: Selftest) -> None:
    """VFIO_IOMMU_DIRTY_PAGES is not emulated: ENOIOCTLCMD, which the caller sees as
    ENOTTY; the extensions the layer cannot offer answer 0."""
    expect_errno(errno.ENOTTY, t.p.ioctl, t.fd, v.VFIO_IOMMU_DIRTY_PAGES, bytearray(8))
    for ext in (v.VFIO_UPDATE_VADDR, v.VFIO_TYPE1_NESTING_IOMMU, v.VFIO_NOIOMMU_IOMMU, 99):
        assert t.p.ioctl(t.fd, v.VFIO_CHECK_EXTENSION, ext) == 0
    assert t.p.ioctl(t.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_UNMAP_ALL) == 1
    expect_errno(errno.ENODEV, t.p.ioctl, t.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU)


# -- FIXTURE(vfio_compat_mock_domain), variants Ver1v2 and Ver1v0 ------------------------------
class Compat(Selftest):
    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version
        self.ioas_id = self.ioas_alloc()
        self.mock_domain(self.ioas_id)
        vfio_ioas(self, u.IOMMU_VFIO_IOAS_SET, self.ioas_id)
        self.p.ioctl(self.fd, v.VFIO_SET_IOMMU, version)

    def map_dma(self, vaddr: int, iova: int, size: int, flags: int = 3) -> None:
        self.ioctl(v.VFIO_IOMMU_MAP_DMA, v.DMA_MAP.pack(32, flags, vaddr, iova, size))

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        return int(v.DMA_UNMAP.unpack(self.ioctl(v.VFIO_IOMMU_UNMAP_DMA, v.DMA_UNMAP.pack(
            24, flags, iova, size)))[3])


@pytest.fixture(params=[v.VFIO_TYPE1v2_IOMMU, v.VFIO_TYPE1_IOMMU], ids=["Ver1v2", "Ver1v0"])
def c(request: pytest.FixtureRequest) -> Iterator[Compat]:
    st = Compat(request.param)
    yield st
    st.close()


def test_compat_simple_close(c: Compat) -> None:
    assert c.p.ioctl(c.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU) in (0, 1)


def test_option_huge_pages(c: Compat) -> None:
    val = c.option(u.IOMMU_OPTION_HUGE_PAGES, u.IOMMU_OPTION_OP_GET, c.ioas_id, 3)
    assert val == (0 if c.version == v.VFIO_TYPE1_IOMMU else 1)


def _get_info(c: Compat, argsz: int) -> bytearray:
    """``ioctl_check_buf``: the command in a BUFFER_SIZE buffer, 0xAA after ``argsz``, which
    the kernel must not touch."""
    buf = bytearray(BUFFER_SIZE)
    buf[:24] = v.IOMMU_INFO.pack(argsz, 0, 0, 0, 0)
    buf[argsz:] = b"\xaa" * (BUFFER_SIZE - argsz)
    c.p.ioctl(c.fd, v.VFIO_IOMMU_GET_INFO, buf)
    assert buf[argsz:] == b"\xaa" * (BUFFER_SIZE - argsz)
    return buf


def _check_cap_chain(buf: bytearray) -> None:
    """``check_vfio_info_cap_chain``, run here on the full chain (the selftest's loop never
    reaches it, see the note on §2.17 case 50)."""
    argsz, _, _, cap_offset, _ = v.IOMMU_INFO.unpack_from(buf)
    at, seen = cap_offset, []
    while True:
        cid, version, nxt = v.CAP_HEADER.unpack_from(buf, at)
        size = (nxt or argsz) - at
        assert version == 1
        if cid == v.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            _, _, _, nr, _ = v.CAP_IOVA_RANGE.unpack_from(buf, at)
            assert nr == 1
            assert v.IOVA_RANGE.unpack_from(buf, at + 16) == (MOCK_APERTURE_START,
                                                               MOCK_APERTURE_LAST)
        else:
            assert cid == v.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
            assert v.CAP_DMA_AVAIL.unpack_from(buf, at)[3] == (1 << 32) - 1
            assert size == 16  # sizeof(dma_avail) rounded up to the next cap's 8-byte slot
        seen.append(cid)
        if not nxt:
            break
        assert nxt >= at + 8 and argsz >= nxt + 8
        at = nxt
    assert seen == [v.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, v.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE]


def test_get_info(c: Compat) -> None:
    buf = _get_info(c, 16)  # the pre-cap ABI
    _, flags, pgsizes, _, _ = v.IOMMU_INFO.unpack_from(buf)
    assert pgsizes == PAGE_SIZE  # the mock's 2K pages fold into PAGE_SIZE
    assert flags == v.VFIO_IOMMU_INFO_PGSIZES | v.VFIO_IOMMU_INFO_CAPS
    buf = _get_info(c, 24)  # reads the chain's size
    caplen, flags, _, cap_offset, _ = v.IOMMU_INFO.unpack_from(buf)
    assert flags == v.VFIO_IOMMU_INFO_PGSIZES | v.VFIO_IOMMU_INFO_CAPS
    assert cap_offset == 0 and caplen == 24 + 16 + 32
    for argsz in range(24, caplen + 1):
        buf = _get_info(c, argsz)
        assert v.IOMMU_INFO.unpack_from(buf)[0] == caplen
        if v.IOMMU_INFO.unpack_from(buf)[3]:
            assert argsz == caplen
            _check_cap_chain(buf)


def test_compat_map(c: Compat) -> None:
    c.map_dma(c.buffer, MOCK_APERTURE_START, BUFFER_SIZE)
    assert c.unmap_dma(MOCK_APERTURE_START, BUFFER_SIZE) == BUFFER_SIZE
    c.map_dma(c.buffer, MOCK_APERTURE_START, BUFFER_SIZE)
    expect_errno(errno.EINVAL, c.unmap_dma, MOCK_APERTURE_START, BUFFER_SIZE,
                 v.VFIO_DMA_UNMAP_FLAG_ALL)
    assert c.unmap_dma(0, 0, v.VFIO_DMA_UNMAP_FLAG_ALL) == BUFFER_SIZE
    iovas = [MOCK_APERTURE_START + i * PAGE_SIZE for i in range(BUFFER_SIZE // PAGE_SIZE)]
    for i, iova in enumerate(iovas):
        c.map_dma(c.buffer + i * PAGE_SIZE, iova, PAGE_SIZE)
    random.Random(1).shuffle(iovas)
    for iova in iovas:
        assert c.unmap_dma(iova, PAGE_SIZE) == PAGE_SIZE


def test_compat_huge_map(c: Compat) -> None:
    """Type1 (v1) can cut up larger mappings; type1v2 always fails with ENOENT."""
    size = 2 * HUGEPAGE_SIZE
    buf = c.p.mmap(size, "hugetlb-2M", populate=True)
    c.map_dma(buf, MOCK_APERTURE_START, size)
    iovas = [MOCK_APERTURE_START + i * (size // 16) for i in range(16)]
    random.Random(2).shuffle(iovas)
    for iova in iovas:
        if c.version == v.VFIO_TYPE1_IOMMU:
            assert c.unmap_dma(iova, size // 16) == size // 16
        else:
            expect_errno(errno.ENOENT, c.unmap_dma, iova, size // 16)
    if c.version == v.VFIO_TYPE1v2_IOMMU:
        assert c.unmap_dma(0, 0, v.VFIO_DMA_UNMAP_FLAG_ALL) == size


def test_v1_split_keeps_the_rest_mapped() -> None:
    """After a v1 hole punch, the halves still map the same pages, one pin per page."""
    c = Compat(v.VFIO_TYPE1_IOMMU)
    hw = c.mock_domain(c.ioas_id)  # a second domain on the same IOAS
    c.map_dma(c.buffer, MOCK_APERTURE_START, BUFFER_SIZE)
    assert c.unmap_dma(MOCK_APERTURE_START + 4 * PAGE_SIZE, 2 * PAGE_SIZE) == 2 * PAGE_SIZE
    for iova, off, n in ((MOCK_APERTURE_START, 0, 4), (MOCK_APERTURE_START + 6 * PAGE_SIZE,
                                                       6 * PAGE_SIZE, 10)):
        c.check_map(hw.hwpt_id, iova, c.buffer + off, n * PAGE_SIZE)
    assert c.m.mem.pins.pins == 14
    c.check_refs(c.buffer + 4 * PAGE_SIZE, 2 * PAGE_SIZE, 0)
    assert c.unmap_dma(MOCK_APERTURE_START, BUFFER_SIZE) == 14 * PAGE_SIZE
    c.close()


def test_unmap_reports_size_on_error(c: Compat) -> None:
    """Unlike type1, the size unmapped is written back when UNMAP fails part way."""
    c.map_dma(c.buffer, MOCK_APERTURE_START, PAGE_SIZE)
    c.map_dma(c.buffer + 2 * PAGE_SIZE, MOCK_APERTURE_START + 2 * PAGE_SIZE, 2 * PAGE_SIZE)
    buf = bytearray(v.DMA_UNMAP.pack(24, 0, MOCK_APERTURE_START, 3 * PAGE_SIZE))
    if c.version == v.VFIO_TYPE1_IOMMU:  # v1 cuts the second mapping and takes both
        c.p.ioctl(c.fd, v.VFIO_IOMMU_UNMAP_DMA, buf)
        assert v.DMA_UNMAP.unpack(buf)[3] == 2 * PAGE_SIZE
        return
    expect_errno(errno.ENOENT, c.p.ioctl, c.fd, v.VFIO_IOMMU_UNMAP_DMA, buf)
    assert v.DMA_UNMAP.unpack(buf)[3] == PAGE_SIZE  # the first area went before the error


def test_unmap_of_an_empty_range_succeeds_with_size_0(c: Compat) -> None:
    """``iommufd_vfio_unmap_dma``: ``iopt_unmap_iova_range`` starts from rc = 0, so a range
    holding no mapping unmaps 0 bytes and succeeds; only IOMMU_IOAS_UNMAP turns nothing
    unmapped into ENOENT."""
    c.map_dma(c.buffer, MOCK_APERTURE_START + 4 * PAGE_SIZE, PAGE_SIZE)
    buf = bytearray(v.DMA_UNMAP.pack(24, 0, MOCK_APERTURE_START, 4 * PAGE_SIZE))
    assert c.p.ioctl(c.fd, v.VFIO_IOMMU_UNMAP_DMA, buf) == 0
    assert v.DMA_UNMAP.unpack(buf) == (24, 0, MOCK_APERTURE_START, 0)
    expect_errno(errno.ENOENT, c.unmap, c.ioas_id, MOCK_APERTURE_START, 4 * PAGE_SIZE)
    assert c.unmap_dma(MOCK_APERTURE_START + 4 * PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE


def test_map_without_read_or_write(c: Compat) -> None:
    """MAP_DMA does not require READ or WRITE (real type1 does); VADDR is EINVAL."""
    c.map_dma(c.buffer, MOCK_APERTURE_START, PAGE_SIZE, flags=0)
    expect_errno(errno.EINVAL, c.map_dma, c.buffer, MOCK_APERTURE_START + PAGE_SIZE,
                 PAGE_SIZE, v.VFIO_DMA_MAP_FLAG_VADDR | 3)


# -- a legacy VMM on CONFIG_IOMMUFD_VFIO_CONTAINER ---------------------------------------------
def _legacy_vm(platform: str, *, v2: bool = True) -> Vm:
    m = Machine(platform, ram="1G")
    m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = True
    return Vm(machine=m, v2=v2, memlock=64 << 20)


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_legacy_vmm_on_iommufd(platform: str) -> None:
    vm = _legacy_vm(platform)
    expect_errno(errno.EINVAL, vm.p.ioctl, vm.g, v.VFIO_GROUP_SET_CONTAINER,
                 bytearray(struct.pack("<i", vm.c)))  # already set
    dfd = vm.p.ioctl(vm.g, v.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0\0"))
    buf = vm.p.mmap(4 << 20, "thp", populate=True)
    vm.map(buf, 1 << 30, 4 << 20)
    vm.dev.dma_write((1 << 30) + 100, b"legacy ABI, iommufd inside")
    assert vm.p.read(buf + 100, 26) == b"legacy ABI, iommufd inside"
    assert vm.histogram() == {2 << 20: 2}  # huge pages stay on for TYPE1v2
    # /dev/vfio/vfio opened as iommufd accounts to the mm, as VFIO does
    assert (vm.p.mm.locked_vm, vm.p.user.locked_vm) == (1024, 0)
    assert vm.unmap(1 << 29, 4096) == 0  # nothing there: 0 bytes, as type1
    expect_errno(errno.ENOENT, vm.unmap, 1 << 30, 4096)  # type1 would say EINVAL
    # neither the default VT-d unit (no snoop control) nor the SMMUv3 enforces coherency
    assert vm.p.ioctl(vm.c, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU) == 0
    assert vm.unmap(1 << 30, 4 << 20) == 4 << 20
    with pytest.raises(OSError):
        vm.dev.dma_read(1 << 30, 4)
    vm.p.close(dfd)
    vm.close()


def test_legacy_vmm_v1_on_iommufd() -> None:
    vm = _legacy_vm("x86-vtd", v2=False)
    dfd = vm.p.ioctl(vm.g, v.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0\0"))
    buf = vm.p.mmap(4 << 20, "thp", populate=True)
    vm.map(buf, 1 << 30, 4 << 20)
    assert vm.histogram() == {4096: 1024}  # v1: large pages off
    assert vm.unmap((1 << 30) + 8192, 4096) == 4096  # exact sub-range
    vm.dev.dma_write(1 << 30, b"still mapped")
    with pytest.raises(OSError):
        vm.dev.dma_read((1 << 30) + 8192, 4)
    vm.p.close(dfd)
    vm.close()


def test_group_set_container_rejects_other_files() -> None:
    m = Machine("x86-vtd", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process()
    g = p.open(f"/dev/vfio/{dev.iommu_group}")
    mfd = p.memfd_create("x", 4096)
    expect_errno(77, p.ioctl, g, v.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", mfd)))
    expect_errno(errno.EBADF, p.ioctl, g, v.VFIO_GROUP_SET_CONTAINER,
                 bytearray(struct.pack("<i", 99)))
    p.exit()
