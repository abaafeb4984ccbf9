"""One scenario per ioctl (and per process call that allocates): a world to run it in
and the call, for :func:`.sweep.sweep`.

Each scenario is the call in a state where it succeeds and does its full work (a
mapping exists where the call fills domains, a device is attached where it needs one);
``setup`` builds that state, ``op`` makes the one call. The platforms a scenario runs
on are those that have what it needs: the selftest commands need the mock (a
CONFIG_IOMMUFD_TEST kernel), IOAS_MAP_FILE Linux 7.0, the VFIO files a vfio-pci device.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iommulab.iommu.resv import MSI_IOVA_BASE, MSI_IOVA_LENGTH
from iommulab.iommufd import uapi as iu
from iommulab.iommufd.selftest import (
    MOCK_ACCESS_RW_SLOW_PATH,
    MOCK_ACCESS_RW_WRITE,
    MOCK_FLAGS_DEVICE_NO_DIRTY,
    OP_ACCESS_PAGES,
    OP_ACCESS_REPLACE_IOAS,
    OP_ACCESS_RW,
    OP_ADD_RESERVED,
    OP_CREATE_ACCESS,
    OP_DESTROY_ACCESS_PAGES,
    OP_DEV_CHECK_CACHE,
    OP_DIRTY,
    OP_MD_CHECK_IOTLB,
    OP_MD_CHECK_MAP,
    OP_MD_CHECK_REFS,
    OP_MOCK_DOMAIN,
    OP_MOCK_DOMAIN_FLAGS,
    OP_MOCK_DOMAIN_REPLACE,
    OP_SET_TEMP_MEMORY_LIMIT,
    OP_TRIGGER_IOPF,
    OP_TRIGGER_VEVENT,
)
from iommulab.uapi import iommufd as ih
from iommulab.vfio import uapi as vu

from ..iommufd.selftest_lib import FIXED, RW, Selftest
from .state import State
from .sweep import World, new_world

__all__ = ["KERNELS", "PLATFORMS", "SCENARIOS", "Call", "Scenario", "on"]

PAGE = 4096
BUF = 64 * PAGE  # 256K, the kernel's fail_nth tests' map size
PLATFORMS = ("mock", "x86-vtd", "arm64-smmuv3")
KERNELS = ("6.12", "7.0")
DEV_PLATFORMS = ("x86-vtd", "arm64-smmuv3")  # vfio-pci devices with cdevs and groups
IOVA = 1 << 24  # inside the mock aperture and every platform's
#: iommufd_device_auto_get_domain treats EINVAL from an existing automatic HWPT as "not
#: compatible" and makes a new one, so this point's failure is absorbed there
_INCOMPATIBLE = ("iommufd_should_fail(iopt_table_enforce_dev_resv_regions)",)


#: The dispatch tables a call goes through: the iommufd ioctls (``uapi.COMMANDS``), the
#: selftest ops of IOMMU_TEST_CMD, the VFIO container ioctls /dev/iommu answers, a VFIO
#: container's, a group's, a device file's own and vfio-pci's; then the process calls
#: (``open`` by path, ``mmap`` by kind of mapping, the others by name).
IOMMUFD, SELFTEST, COMPAT, CONTAINER, GROUP, DEVICE, VFIO_PCI = (
    "iommufd", "selftest", "compat", "container", "group", "device", "vfio-pci")
OPEN, MMAP, PROC = "open", "mmap", "process"


@dataclass(frozen=True)
class Call:
    """One entry point of the model: a request (or op, or path, or call) of a table."""

    table: str
    request: int | str

    def __repr__(self) -> str:
        what = self.request if isinstance(self.request, str) else f"{self.request:#x}"
        return f"{self.table}:{what}"


def on(table: str, *requests: int | str) -> tuple[Call, ...]:
    return tuple(Call(table, r) for r in requests)


@dataclass(frozen=True)
class Scenario:
    """``name`` (the call and what it is given), ``covers`` (the entry points ``op``
    calls, checked by test_coverage), ``setup`` (platform, kernel) -> World, ``op`` the
    call, the platforms and kernels it runs on. ``absorbs``: sites whose failure this
    call's kernel path absorbs; ``expect``: the errno the call fails with when nothing is
    injected (a call the model can only refuse, as the kernel does in that state);
    ``relax``: what a failed call may leave changed, as the kernel leaves it
    (:func:`.sweep.sweep`)."""

    name: str
    covers: tuple[Call, ...]
    setup: Callable[[str, str], World]
    op: Callable[[World], object]
    platforms: tuple[str, ...] = PLATFORMS
    kernels: tuple[str, ...] = KERNELS
    absorbs: tuple[str, ...] = ()
    expect: int | None = None
    relax: Callable[[State], State] | None = None


class Fd(Selftest):
    """The selftest helpers over a world's process and /dev/iommu fd."""

    def __init__(self, w: World, fd: int) -> None:
        self.m, self.p, self.fd = w.m, w.p, fd


# -- building blocks --------------------------------------------------------------------------
def _iommufd(platform: str, kernel: str, **proc: Any) -> World:
    """A world with /dev/iommu open (``h["t"]``), a populated 256K buffer (``h["buf"]``)
    and, off the mock, two vfio-pci devices."""
    w = new_world(platform, kernel, devices=0 if platform == "mock" else 2, **proc)
    t = Fd(w, w.p.open("/dev/iommu"))
    w.h["t"] = t
    w.h["buf"] = w.p.mmap(BUF, populate=True)
    w.h["bitmap"] = w.p.mmap(PAGE, populate=True)  # user arrays the commands point at
    w.h["ranges"] = w.p.mmap(PAGE, populate=True)
    w.p.write(w.h["ranges"], iu.IOVA_RANGE.pack(16 * PAGE, 1 << 30) +
              iu.IOVA_RANGE.pack(2 << 30, 3 << 30))
    return w


def _t(w: World) -> Fd:
    t = w.h["t"]
    assert isinstance(t, Fd)
    return t


def _attach(w: World, pt_id: int, n: int = 0) -> tuple[int, int]:
    """A device attached to ``pt_id``: a mock device (MOCK_DOMAIN) on the mock, else
    vfio-pci device ``n``'s cdev bound and attached; (device id, HWPT id)."""
    t = _t(w)
    if w.m.platform == "mock":
        md = t.mock_domain(pt_id)
        w.h.setdefault("stdevs", []).append(md.stdev_id)
        return md.idev_id, md.hwpt_id
    cdev, devid = _bind(w, n)
    w.h.setdefault("cdevs", []).append(cdev)
    return devid, _attach_pt(w, cdev, pt_id)


def _bind(w: World, n: int) -> tuple[int, int]:
    cdev = w.p.open(f"/dev/vfio/devices/vfio{n}")
    return cdev, _bind_fd(w, cdev)


def _bind_fd(w: World, cdev: int) -> int:
    buf = bytearray(vu.BIND_IOMMUFD.pack(16, 0, _t(w).fd, 0))
    w.p.ioctl(cdev, vu.VFIO_DEVICE_BIND_IOMMUFD, buf)
    return int(vu.BIND_IOMMUFD.unpack(buf)[3])


def _attach_pt(w: World, cdev: int, pt_id: int) -> int:
    buf = bytearray(vu.ATTACH_IOMMUFD_PT.pack(16, 0, pt_id, 0))
    w.p.ioctl(cdev, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT, buf)
    return int(vu.ATTACH_IOMMUFD_PT.unpack(buf)[2])


def _ioas(domains: int = 0, mapped: bool = False, *, limit: int = 0,
          **proc: Any) -> Callable[[str, str], World]:
    """An IOAS (``h["ioas"]``) with ``domains`` devices attached (two on two domains)
    and, if ``mapped``, the buffer mapped at IOVA (after the domains, so they are filled
    by the map)."""
    def setup(platform: str, kernel: str) -> World:
        w = _iommufd(platform, kernel, **proc)
        t = _t(w)
        if limit:
            t.set_temp_memory_limit(limit)
        w.h["ioas"] = t.ioas_alloc()
        w.h["devs"] = [_attach(w, w.h["ioas"], i) for i in range(domains)]
        if domains == 2:  # the second device on a HWPT of its own: two domains
            hwpt = t.hwpt_alloc(w.h["devs"][1][0], w.h["ioas"])
            if platform == "mock":
                t.mock_domain_replace(w.h["stdevs"][1], hwpt)
            else:
                _attach_pt(w, w.h["cdevs"][1], hwpt)
        if mapped:
            t.map_fixed(w.h["ioas"], w.h["buf"], BUF, IOVA)
        return w
    return setup


def _map(w: World) -> object:
    return _t(w).map(w.h["ioas"], w.h["buf"], BUF)


# -- iommufd ------------------------------------------------------------------------------------
def _two_ioas(platform: str, kernel: str) -> World:
    """Two IOASes, each with an attached device and the buffer mapped in the first."""
    w = _ioas(1, True)(platform, kernel)
    t = _t(w)
    w.h["ioas2"] = t.ioas_alloc()
    w.h["devs"].append(_attach(w, w.h["ioas2"], 1))
    return w


def _cdev(*, bound: bool, hwpt: bool = False) -> Callable[[str, str], World]:
    """Device 0's cdev open (``h["cdev"]``), bound if ``bound``; an IOAS with the buffer
    mapped; with ``hwpt`` a HWPT of it made for the device (``h["hwpt"]``)."""
    def setup(platform: str, kernel: str) -> World:
        w = _ioas(0, True)(platform, kernel)
        w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
        if bound:
            devid = _bind_fd(w, w.h["cdev"])
            # attached and detached: the group on the blocking domain, where
            # iommu_device_claim_dma_owner puts it at bind (the model does not yet: part
            # "own" of issue 19), so a failed attach's return to blocking is no change
            _attach_pt(w, w.h["cdev"], w.h["ioas"])
            _detach(w, w.h["cdev"])
            if hwpt:
                w.h["hwpt"] = _t(w).hwpt_alloc(devid, w.h["ioas"])
        return w
    return setup


def _detach(w: World, cdev: int) -> None:
    w.p.ioctl(cdev, vu.VFIO_DEVICE_DETACH_IOMMUFD_PT,
              bytearray(vu.DETACH_IOMMUFD_PT_MINSZ.to_bytes(4, "little") + bytes(4)))


def _memfd(domains: int) -> Callable[[str, str], World]:
    def setup(platform: str, kernel: str) -> World:
        w = _ioas(domains)(platform, kernel)
        mfd = w.p.memfd_create("guest", BUF)
        va = w.p.mmap(BUF, fd=mfd, shared=True)
        w.p.write(va, b"\1" * BUF)  # the file's pages exist
        w.h["memfd"] = mfd
        return w
    return setup


def _hwpt(flags: int = 0) -> Callable[[str, str], World]:
    """An IOAS with a device attached and the buffer mapped, and a HWPT of it
    (``h["hwpt"]``) made with ``flags``."""
    def setup(platform: str, kernel: str) -> World:
        w = _ioas(1, True)(platform, kernel)
        devid = w.h["devs"][0][0]
        w.h["hwpt"] = _t(w).hwpt_alloc(devid, w.h["ioas"], flags)
        return w
    return setup


def _dirty(platform: str, kernel: str) -> World:
    """A dirty-tracking HWPT with a device on it, tracking on; a populated bitmap."""
    w = _hwpt(iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)(platform, kernel)
    if platform == "mock":
        _t(w).mock_domain_replace(w.h["stdevs"][0], w.h["hwpt"])
    else:
        _attach_pt(w, w.h["cdevs"][0], w.h["hwpt"])
    _t(w).set_dirty_tracking(w.h["hwpt"], True)
    return w


def _compat(platform: str, kernel: str) -> World:
    """/dev/iommu as a VFIO container: a compat IOAS with a device, type1v2 set."""
    w = _ioas(1)(platform, kernel)
    t = _t(w)
    t.ioctl(iu.IOMMU_VFIO_IOAS, iu.VFIO_IOAS.pack(12, w.h["ioas"], iu.IOMMU_VFIO_IOAS_SET, 0))
    w.p.ioctl(t.fd, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1v2_IOMMU)
    return w


def _compat_map(w: World) -> object:
    return w.p.ioctl(_t(w).fd, vu.VFIO_IOMMU_MAP_DMA,
                     bytearray(vu.DMA_MAP.pack(32, 3, w.h["buf"], IOVA, BUF)))


def _compat_v1_mapped(platform: str, kernel: str) -> World:
    """A v1 compat container (large pages off) with the buffer mapped."""
    w = _ioas(1)(platform, kernel)
    t = _t(w)
    t.ioctl(iu.IOMMU_VFIO_IOAS, iu.VFIO_IOAS.pack(12, w.h["ioas"], iu.IOMMU_VFIO_IOAS_SET, 0))
    w.p.ioctl(t.fd, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1_IOMMU)
    _compat_map(w)
    return w


# -- the selftest commands (mock) ---------------------------------------------------------------
def _access(needs_pin: bool, domains: int = 0) -> Callable[[str, str], World]:
    """The buffer mapped, ``domains`` mock domains, an access (``h["access"]``)."""
    def setup(platform: str, kernel: str) -> World:
        w = _ioas(domains, True)(platform, kernel)
        w.h["access"] = _t(w).create_access(w.h["ioas"], int(needs_pin))
        return w
    return setup


def _access_and_ioas(platform: str, kernel: str) -> World:
    w = _access(True)(platform, kernel)
    w.h["ioas2"] = _t(w).ioas_alloc()
    return w


def _access_item(platform: str, kernel: str) -> World:
    w = _access(True)(platform, kernel)
    w.h["item"] = _t(w).access_pages(w.h["access"], IOVA, BUF, w.h["buf"])
    return w


def _access_rw(flags: int, length: int = 64) -> Callable[[World], object]:
    def op(w: World) -> object:
        _t(w).access_rw(w.h["access"], IOVA, w.h["rwbuf"], length, flags)
        return None
    return op


def _rw_setup(length: int) -> Callable[[str, str], World]:
    def setup(platform: str, kernel: str) -> World:
        w = _access(False)(platform, kernel)
        w.h["rwbuf"] = w.p.mmap(max(length, PAGE), populate=True)
        return w
    return setup


SCENARIOS: list[Scenario] = [
    # iommufd core
    Scenario("IOAS_ALLOC", on(IOMMUFD, iu.IOMMU_IOAS_ALLOC),
             lambda p, k: _iommufd(p, k), lambda w: _t(w).ioas_alloc()),
    Scenario("DESTROY(ioas)", on(IOMMUFD, iu.IOMMU_DESTROY),
             _ioas(0, True), lambda w: _t(w).destroy(w.h["ioas"])),
    Scenario("IOAS_IOVA_RANGES", on(IOMMUFD, iu.IOMMU_IOAS_IOVA_RANGES),
             _ioas(1), lambda w: _t(w).ioctl(
                 iu.IOMMU_IOAS_IOVA_RANGES,
                 iu.IOAS_IOVA_RANGES.pack(32, w.h["ioas"], 4, 0, w.h["bitmap"], 0))),
    Scenario("IOAS_ALLOW_IOVAS", on(IOMMUFD, iu.IOMMU_IOAS_ALLOW_IOVAS),
             _ioas(), lambda w: _t(w).ioctl(
                 iu.IOMMU_IOAS_ALLOW_IOVAS,
                 iu.IOAS_ALLOW_IOVAS.pack(24, w.h["ioas"], 2, 0, w.h["ranges"]))),
    Scenario("IOAS_MAP(no domain)", on(IOMMUFD, iu.IOMMU_IOAS_MAP), _ioas(), _map),
    Scenario("IOAS_MAP(1 domain)", on(IOMMUFD, iu.IOMMU_IOAS_MAP), _ioas(1), _map),
    Scenario("IOAS_MAP(2 domains)", on(IOMMUFD, iu.IOMMU_IOAS_MAP), _ioas(2), _map),
    Scenario("IOAS_MAP(1 domain, limit 32)", on(IOMMUFD, iu.IOMMU_IOAS_MAP),
             _ioas(1, limit=32), _map, ("mock",)),
    Scenario("IOAS_MAP(1 domain, RLIMIT)", on(IOMMUFD, iu.IOMMU_IOAS_MAP),
             _ioas(1, memlock_limit=1 << 20), _map),
    Scenario("IOAS_MAP_FILE(1 domain)", on(IOMMUFD, iu.IOMMU_IOAS_MAP_FILE),
             _memfd(1), lambda w: _t(w).map_file(
                 w.h["ioas"], w.h["memfd"], 0, BUF, IOVA, RW | FIXED), kernels=("7.0",)),
    Scenario("IOAS_COPY", on(IOMMUFD, iu.IOMMU_IOAS_COPY),
             _two_ioas, lambda w: _t(w).copy(w.h["ioas2"], w.h["ioas"], IOVA, BUF, IOVA)),
    Scenario("IOAS_UNMAP(1 domain)", on(IOMMUFD, iu.IOMMU_IOAS_UNMAP),
             _ioas(1, True), lambda w: _t(w).unmap(w.h["ioas"], IOVA, BUF)),
    Scenario("IOAS_UNMAP(2 domains)", on(IOMMUFD, iu.IOMMU_IOAS_UNMAP),
             _ioas(2, True), lambda w: _t(w).unmap(w.h["ioas"], IOVA, BUF)),
    Scenario("OPTION(HUGE_PAGES=0)", on(IOMMUFD, iu.IOMMU_OPTION),
             _ioas(), lambda w: _t(w).option(
                 iu.IOMMU_OPTION_HUGE_PAGES, iu.IOMMU_OPTION_OP_SET, w.h["ioas"], 0)),
    Scenario("VFIO_IOAS(SET)", on(IOMMUFD, iu.IOMMU_VFIO_IOAS),
             _ioas(), lambda w: _t(w).ioctl(
                 iu.IOMMU_VFIO_IOAS,
                 iu.VFIO_IOAS.pack(12, w.h["ioas"], iu.IOMMU_VFIO_IOAS_SET, 0))),
    Scenario("HWPT_ALLOC", on(IOMMUFD, iu.IOMMU_HWPT_ALLOC),
             _ioas(1, True), lambda w: _t(w).hwpt_alloc(w.h["devs"][0][0], w.h["ioas"])),
    Scenario("HWPT_ALLOC(DIRTY_TRACKING)", on(IOMMUFD, iu.IOMMU_HWPT_ALLOC),
             _ioas(1, True), lambda w: _t(w).hwpt_alloc(
                 w.h["devs"][0][0], w.h["ioas"], iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
             ("mock",)),
    Scenario("HWPT_SET_DIRTY_TRACKING", on(IOMMUFD, iu.IOMMU_HWPT_SET_DIRTY_TRACKING),
             _hwpt(iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING),
             lambda w: _t(w).set_dirty_tracking(w.h["hwpt"], True), ("mock",)),
    Scenario("HWPT_GET_DIRTY_BITMAP", on(IOMMUFD, iu.IOMMU_HWPT_GET_DIRTY_BITMAP),
             _dirty, lambda w: _t(w).get_dirty_bitmap(
                 w.h["hwpt"], IOVA, BUF, PAGE, w.h["bitmap"]), ("mock",)),
    Scenario("GET_HW_INFO", on(IOMMUFD, iu.IOMMU_GET_HW_INFO),
             _ioas(1), lambda w: _t(w).ioctl(iu.IOMMU_GET_HW_INFO, iu.HW_INFO.pack(
                 40, 0, w.h["devs"][0][0], 64, w.h["bitmap"], 0, 0, b"\0" * 3, 0))),
    # VFIO compatibility on /dev/iommu
    Scenario("compat VFIO_SET_IOMMU", on(COMPAT, vu.VFIO_SET_IOMMU),
             _ioas(1), lambda w: (
                 _t(w).ioctl(iu.IOMMU_VFIO_IOAS,
                             iu.VFIO_IOAS.pack(12, w.h["ioas"], iu.IOMMU_VFIO_IOAS_SET, 0)),
                 w.p.ioctl(_t(w).fd, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1_IOMMU))),
    Scenario("compat VFIO_IOMMU_MAP_DMA", on(COMPAT, vu.VFIO_IOMMU_MAP_DMA),
             _compat, _compat_map),
    Scenario("compat VFIO_IOMMU_UNMAP_DMA(v1 cut)", on(COMPAT, vu.VFIO_IOMMU_UNMAP_DMA),
             _compat_v1_mapped, lambda w: w.p.ioctl(
                 _t(w).fd, vu.VFIO_IOMMU_UNMAP_DMA,
                 bytearray(vu.DMA_UNMAP.pack(24, 0, IOVA, PAGE)))),
    Scenario("compat VFIO_IOMMU_GET_INFO", on(COMPAT, vu.VFIO_IOMMU_GET_INFO),
             _compat, lambda w: w.p.ioctl(
                 _t(w).fd, vu.VFIO_IOMMU_GET_INFO,
                 bytearray(vu.IOMMU_INFO.pack(64, 0, 0, 0, 0)) + bytearray(40))),
    # the selftest commands
    Scenario("TEST MOCK_DOMAIN", on(SELFTEST, OP_MOCK_DOMAIN),
             _ioas(0, True), lambda w: _t(w).mock_domain(w.h["ioas"]), ("mock",)),
    Scenario("TEST MOCK_DOMAIN_REPLACE(ioas)", on(SELFTEST, OP_MOCK_DOMAIN_REPLACE),
             _two_ioas, lambda w: _t(w).mock_domain_replace(w.h["stdevs"][0], w.h["ioas2"]),
             ("mock",), absorbs=_INCOMPATIBLE),
    Scenario("TEST MOCK_DOMAIN_REPLACE(hwpt)", on(SELFTEST, OP_MOCK_DOMAIN_REPLACE),
             _hwpt(), lambda w: _t(w).mock_domain_replace(w.h["stdevs"][0], w.h["hwpt"]),
             ("mock",)),
    Scenario("TEST ADD_RESERVED", on(SELFTEST, OP_ADD_RESERVED),
             _ioas(), lambda w: _t(w).add_reserved(w.h["ioas"], 1 << 40, PAGE), ("mock",)),
    Scenario("TEST CREATE_ACCESS", on(SELFTEST, OP_CREATE_ACCESS),
             _ioas(0, True), lambda w: _t(w).create_access(w.h["ioas"], 1), ("mock",)),
    Scenario("TEST ACCESS_PAGES(no domain)", on(SELFTEST, OP_ACCESS_PAGES),
             _access(True), lambda w: _t(w).access_pages(
                 w.h["access"], IOVA, BUF, w.h["buf"]), ("mock",)),
    Scenario("TEST ACCESS_PAGES(1 domain)", on(SELFTEST, OP_ACCESS_PAGES),
             _access(True, 1), lambda w: _t(w).access_pages(
                 w.h["access"], IOVA, BUF, w.h["buf"]), ("mock",)),
    Scenario("TEST DESTROY_ACCESS_PAGES", on(SELFTEST, OP_DESTROY_ACCESS_PAGES),
             _access_item, lambda w: _t(w).test_cmd(
                 OP_DESTROY_ACCESS_PAGES, w.h["access"], struct.pack("<I", w.h["item"])),
             ("mock",)),
    Scenario("TEST ACCESS_RW(read)", on(SELFTEST, OP_ACCESS_RW),
             _rw_setup(64), _access_rw(0), ("mock",)),
    Scenario("TEST ACCESS_RW(write)", on(SELFTEST, OP_ACCESS_RW),
             _rw_setup(64), _access_rw(MOCK_ACCESS_RW_WRITE), ("mock",)),
    Scenario("TEST ACCESS_RW(slow, one page)", on(SELFTEST, OP_ACCESS_RW),
             _rw_setup(64), _access_rw(MOCK_ACCESS_RW_SLOW_PATH), ("mock",)),
    Scenario("TEST ACCESS_RW(slow, 16 pages)", on(SELFTEST, OP_ACCESS_RW),
             _rw_setup(16 * PAGE), _access_rw(MOCK_ACCESS_RW_SLOW_PATH, 16 * PAGE), ("mock",)),
    Scenario("TEST ACCESS_REPLACE_IOAS", on(SELFTEST, OP_ACCESS_REPLACE_IOAS),
             _access_and_ioas, lambda w: _t(w).access_replace_ioas(
                 w.h["access"], w.h["ioas2"]), ("mock",)),
    Scenario("TEST DIRTY", on(SELFTEST, OP_DIRTY),
             _dirty, lambda w: _t(w).mock_dirty(w.h["hwpt"], IOVA, BUF, PAGE, w.h["bitmap"]),
             ("mock",)),
    Scenario("TEST MD_CHECK_REFS", on(SELFTEST, OP_MD_CHECK_REFS),
             _ioas(1, True), lambda w: _t(w).test_cmd(
                 OP_MD_CHECK_REFS, 0, struct.pack("<QQI", BUF, w.h["buf"], 1)), ("mock",)),
    Scenario("TEST TRIGGER_IOPF", on(SELFTEST, OP_TRIGGER_IOPF),
             _ioas(1), lambda w: _t(w).test_cmd(
                 OP_TRIGGER_IOPF, 0, struct.pack("<I", w.h["devs"][0][0])), ("mock",)),
    # VFIO device cdevs
    Scenario("cdev BIND_IOMMUFD", on(DEVICE, vu.VFIO_DEVICE_BIND_IOMMUFD),
             _cdev(bound=False), lambda w: _bind_fd(w, w.h["cdev"]), DEV_PLATFORMS),
    Scenario("cdev ATTACH_IOMMUFD_PT(ioas)", on(DEVICE, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT),
             _cdev(bound=True), lambda w: _attach_pt(w, w.h["cdev"], w.h["ioas"]),
             DEV_PLATFORMS),
    Scenario("cdev ATTACH_IOMMUFD_PT(hwpt)", on(DEVICE, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT),
             _cdev(bound=True, hwpt=True), lambda w: _attach_pt(w, w.h["cdev"], w.h["hwpt"]),
             DEV_PLATFORMS),
    Scenario("cdev ATTACH_IOMMUFD_PT(replace, ioas)",
             on(DEVICE, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT),
             _two_ioas, lambda w: _attach_pt(w, w.h["cdevs"][0], w.h["ioas2"]),
             DEV_PLATFORMS, absorbs=_INCOMPATIBLE),
    Scenario("cdev DETACH_IOMMUFD_PT", on(DEVICE, vu.VFIO_DEVICE_DETACH_IOMMUFD_PT),
             _ioas(1, True), lambda w: _detach(w, w.h["cdevs"][0]), DEV_PLATFORMS),
]


# -- nesting and fault queues (6.12's mock: docs/design/nesting.md) ---------------------------
NESTED_DATA = struct.pack("<I", 0xBADBEEF)  # struct iommu_hwpt_selftest


def _fault_alloc(w: World) -> tuple[int, int]:
    """IOMMU_FAULT_QUEUE_ALLOC: (fault id, fault fd)."""
    out = _t(w).ioctl(iu.IOMMU_FAULT_QUEUE_ALLOC, struct.pack("<IIII", 16, 0, 0, 0))
    _, _, fault_id, fault_fd = struct.unpack("<IIII", out)
    return fault_id, fault_fd


def _nest(flags: int = 0, *, iopf: bool = False, on_iopf: bool = False
          ) -> Callable[[str, str], World]:
    """An IOAS with a device attached and the buffer mapped, a NEST_PARENT HWPT of it
    (``h["parent"]``), a fault queue (``h["fault"]``, ``h["fault_fd"]``); with ``iopf``
    a nested HWPT delivering to it (``h["iopf"]``), and with ``on_iopf`` the device
    replaced onto that HWPT."""
    def setup(platform: str, kernel: str) -> World:
        w = _ioas(1, True)(platform, kernel)
        t = _t(w)
        w.h["parent"] = t.hwpt_alloc(w.h["devs"][0][0], w.h["ioas"],
                                     iu.IOMMU_HWPT_ALLOC_NEST_PARENT | flags)
        w.h["fault"], w.h["fault_fd"] = _fault_alloc(w)
        w.h["data"] = w.p.mmap(PAGE, populate=True)
        w.p.write(w.h["data"], NESTED_DATA)
        if iopf:
            w.h["iopf"] = _nested_alloc(w, fault=True)
        if on_iopf:
            t.mock_domain_replace(w.h["stdevs"][0], w.h["iopf"])
        return w
    return setup


def _nested_alloc(w: World, *, fault: bool) -> int:
    return _t(w).hwpt_alloc(w.h["devs"][0][0], w.h["parent"],
                            iu.IOMMU_HWPT_FAULT_ID_VALID if fault else 0,
                            data_type=0xDEAD, data_len=4, data_uptr=w.h["data"],
                            fault_id=w.h["fault"] if fault else 0)


def _trigger(w: World) -> object:
    return _t(w).test_cmd(OP_TRIGGER_IOPF, 0, struct.pack(
        "<IIIIQ", w.h["devs"][0][0], 1, 2, 3, 0xDEADBEAF))


SCENARIOS += [
    Scenario("FAULT_QUEUE_ALLOC", on(IOMMUFD, iu.IOMMU_FAULT_QUEUE_ALLOC),
             _ioas(), _fault_alloc),
    Scenario("HWPT_ALLOC(nested, FAULT_ID_VALID)", on(IOMMUFD, iu.IOMMU_HWPT_ALLOC),
             _nest(), lambda w: _nested_alloc(w, fault=True), ("mock",), ("6.12",)),
    Scenario("TEST MOCK_DOMAIN_REPLACE(nested, IOPF)", on(SELFTEST, OP_MOCK_DOMAIN_REPLACE),
             _nest(iopf=True), lambda w: _t(w).mock_domain_replace(
                 w.h["stdevs"][0], w.h["iopf"]), ("mock",), ("6.12",)),
    Scenario("TEST MOCK_DOMAIN_REPLACE(nested IOPF -> parent)",
             on(SELFTEST, OP_MOCK_DOMAIN_REPLACE), _nest(iopf=True, on_iopf=True),
             lambda w: _t(w).mock_domain_replace(w.h["stdevs"][0], w.h["parent"]),
             ("mock",), ("6.12",)),
    # the group that cannot be allocated is answered FAILURE at once
    # (iommu_report_device_fault's abort_group): the command succeeds either way
    Scenario("TEST TRIGGER_IOPF(fault queue)", on(SELFTEST, OP_TRIGGER_IOPF),
             _nest(iopf=True, on_iopf=True), _trigger, ("mock",), ("6.12",),
             absorbs=("kzalloc(iopf_group)",)),
]


# -- VFIO containers and groups (type1) ---------------------------------------------------------
def _vfio(*, container: bool = True, iommu: int = 0, group: bool = True,
          set_container: bool = True, mapped: bool = False, tracking: bool = False,
          second: bool = False) -> Callable[[str, str], World]:
    """Device 0's group open (``h["g"]``) and, with ``container``, /dev/vfio/vfio
    (``h["c"]``) set as its container (unless not ``set_container``); ``iommu``: the
    type set on it (0: none); ``mapped``: the buffer mapped at IOVA; ``tracking``: dirty
    tracking started; ``second``: device 1's group open too (``h["g2"]``)."""
    def setup(platform: str, kernel: str) -> World:
        w = new_world(platform, kernel, devices=2)
        w.h["buf"] = w.p.mmap(BUF, populate=True)
        w.h["bitmap"] = w.p.mmap(PAGE, populate=True)
        dev = w.m.devices["0000:00:01.0"]
        if container:
            w.h["c"] = w.p.open("/dev/vfio/vfio")
        if group:
            w.h["g"] = w.p.open(f"/dev/vfio/{dev.iommu_group}")
        if second:
            w.h["g2"] = w.p.open(f"/dev/vfio/{w.m.devices['0000:00:02.0'].iommu_group}")
        if container and group and set_container:
            w.p.ioctl(w.h["g"], vu.VFIO_GROUP_SET_CONTAINER,
                      bytearray(struct.pack("<i", w.h["c"])))
        if iommu:
            w.p.ioctl(w.h["c"], vu.VFIO_SET_IOMMU, iommu)
        if mapped:
            _vfio_map(w)
        if tracking:
            _dirty_pages(w, vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)
        return w
    return setup


def _vfio_map(w: World) -> object:
    return w.p.ioctl(w.h["c"], vu.VFIO_IOMMU_MAP_DMA,
                     bytearray(vu.DMA_MAP.pack(32, 3, w.h["buf"], IOVA, BUF)))


def _dirty_pages(w: World, flags: int) -> object:
    if flags != vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP:
        return w.p.ioctl(w.h["c"], vu.VFIO_IOMMU_DIRTY_PAGES,
                         bytearray(vu.DIRTY_BITMAP.pack(8, flags)))
    arg = vu.DIRTY_BITMAP.pack(8 + vu.DIRTY_BITMAP_GET.size, flags) + \
        vu.DIRTY_BITMAP_GET.pack(IOVA, BUF, PAGE, 8, w.h["bitmap"])
    return w.p.ioctl(w.h["c"], vu.VFIO_IOMMU_DIRTY_PAGES, bytearray(arg))


V2 = vu.VFIO_TYPE1v2_IOMMU
SCENARIOS += [
    Scenario("open(/dev/vfio/vfio)", on(OPEN, "/dev/vfio/vfio"),
             _vfio(container=False, group=False), lambda w: w.p.open("/dev/vfio/vfio"),
             DEV_PLATFORMS),
    Scenario("open(/dev/iommu)", on(OPEN, "/dev/iommu"),
             _vfio(container=False, group=False), lambda w: w.p.open("/dev/iommu"),
             DEV_PLATFORMS),
    Scenario("open(/dev/vfio/devices/vfio0)", on(OPEN, "/dev/vfio/devices/vfio<N>"),
             _vfio(container=False, group=False),
             lambda w: w.p.open("/dev/vfio/devices/vfio0"), DEV_PLATFORMS),
    Scenario("VFIO_GROUP_SET_CONTAINER", on(GROUP, vu.VFIO_GROUP_SET_CONTAINER),
             _vfio(set_container=False), lambda w: w.p.ioctl(
                 w.h["g"], vu.VFIO_GROUP_SET_CONTAINER,
                 bytearray(struct.pack("<i", w.h["c"]))), DEV_PLATFORMS),
    Scenario("VFIO_GROUP_SET_CONTAINER(second group)", on(GROUP, vu.VFIO_GROUP_SET_CONTAINER),
             _vfio(iommu=V2, mapped=True, second=True), lambda w: w.p.ioctl(
                 w.h["g2"], vu.VFIO_GROUP_SET_CONTAINER,
                 bytearray(struct.pack("<i", w.h["c"]))), DEV_PLATFORMS),
    Scenario("VFIO_SET_IOMMU(TYPE1v2)", on(CONTAINER, vu.VFIO_SET_IOMMU),
             _vfio(), lambda w: w.p.ioctl(w.h["c"], vu.VFIO_SET_IOMMU, V2), DEV_PLATFORMS),
    Scenario("VFIO_GROUP_GET_DEVICE_FD", on(GROUP, vu.VFIO_GROUP_GET_DEVICE_FD),
             _vfio(iommu=V2), lambda w: w.p.ioctl(
                 w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:01.0\0")),
             DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_GET_INFO", on(CONTAINER, vu.VFIO_IOMMU_GET_INFO),
             _vfio(iommu=V2), lambda w: w.p.ioctl(
                 w.h["c"], vu.VFIO_IOMMU_GET_INFO,
                 bytearray(vu.IOMMU_INFO.pack(256, 0, 0, 0, 0)) + bytearray(232)),
             DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_MAP_DMA", on(CONTAINER, vu.VFIO_IOMMU_MAP_DMA),
             _vfio(iommu=V2), _vfio_map, DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_MAP_DMA(tracking)", on(CONTAINER, vu.VFIO_IOMMU_MAP_DMA),
             _vfio(iommu=V2, tracking=True), _vfio_map, DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_UNMAP_DMA", on(CONTAINER, vu.VFIO_IOMMU_UNMAP_DMA),
             _vfio(iommu=V2, mapped=True), lambda w: w.p.ioctl(
                 w.h["c"], vu.VFIO_IOMMU_UNMAP_DMA,
                 bytearray(vu.DMA_UNMAP.pack(24, 0, IOVA, BUF))), DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_DIRTY_PAGES(START)", on(CONTAINER, vu.VFIO_IOMMU_DIRTY_PAGES),
             _vfio(iommu=V2, mapped=True),
             lambda w: _dirty_pages(w, vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_START), DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_DIRTY_PAGES(GET_BITMAP)", on(CONTAINER, vu.VFIO_IOMMU_DIRTY_PAGES),
             _vfio(iommu=V2, mapped=True, tracking=True),
             lambda w: _dirty_pages(w, vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP),
             DEV_PLATFORMS),
    Scenario("VFIO_IOMMU_DIRTY_PAGES(STOP)", on(CONTAINER, vu.VFIO_IOMMU_DIRTY_PAGES),
             _vfio(iommu=V2, mapped=True, tracking=True),
             lambda w: _dirty_pages(w, vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), DEV_PLATFORMS),
    Scenario("VFIO_GROUP_UNSET_CONTAINER", on(GROUP, vu.VFIO_GROUP_UNSET_CONTAINER),
             _vfio(iommu=V2, mapped=True),
             lambda w: w.p.ioctl(w.h["g"], vu.VFIO_GROUP_UNSET_CONTAINER), DEV_PLATFORMS),
]


# -- the rest of the ioctl tables -------------------------------------------------------------
def _invalidate(w: World) -> object:
    """HWPT_INVALIDATE of no entries, to a paging HWPT: the model has no nested HWPT or
    vIOMMU, so the kernel's lookup refuses it before anything is allocated."""
    return _t(w).ioctl(iu.IOMMU_HWPT_INVALIDATE,
                       iu.HWPT_INVALIDATE.pack(32, w.h["hwpt"], 0, 0, 0, 0, 0))


def _changed_process(platform: str, kernel: str) -> World:
    """A memfd mapped into an IOAS with a device (IOAS_MAP_FILE) and a forked child
    (``w.procs[1]``), the process the pages move to."""
    w = _memfd(1)(platform, kernel)
    _t(w).map_file(w.h["ioas"], w.h["memfd"], 0, BUF, IOVA, RW | FIXED)
    w.procs.append(w.p.fork())
    return w


def _device_fd(platform: str, kernel: str) -> World:
    """Device 0's fd from its group (``h["dev"]``), the group in a type1 container."""
    w = _vfio(iommu=V2)(platform, kernel)
    w.h["dev"] = w.p.ioctl(w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD,
                           bytearray(b"0000:00:01.0\0"))
    return w


def _bound_cdev(platform: str, kernel: str) -> World:
    w = _cdev(bound=True)(platform, kernel)
    w.h["dev"] = w.h["cdev"]
    return w


def _device_info(w: World) -> object:
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_GET_INFO,
                     bytearray(vu.DEVICE_INFO.pack(vu.DEVICE_INFO.size, 0, 0, 0, 0, 0)))


def _region_info(w: World) -> object:
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_GET_REGION_INFO, bytearray(
        vu.REGION_INFO.pack(vu.REGION_INFO.size, 0, vu.VFIO_PCI_BAR0_REGION_INDEX, 0, 0, 0)))


def _group_on_iommufd(platform: str, kernel: str) -> World:
    """Device 0's group (``h["g"]``) given /dev/iommu as its container: the context's
    compatibility IOAS holds the buffer mapped."""
    w = _iommufd(platform, kernel)
    w.h["g"] = w.p.open(f"/dev/vfio/{w.m.devices['0000:00:01.0'].iommu_group}")
    w.p.ioctl(w.h["g"], vu.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", _t(w).fd)))
    w.p.ioctl(_t(w).fd, vu.VFIO_SET_IOMMU, V2)
    _compat_map(w)
    return w


def _iommufd_container(platform: str, kernel: str) -> World:
    """CONFIG_IOMMUFD_VFIO_CONTAINER: /dev/vfio/vfio is iommufd."""
    w = _vfio(container=False, group=False)(platform, kernel)
    w.m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = True
    return w


def _test_op(op: int, id_of: Callable[[World], int], union: bytes) -> Callable[[World], object]:
    return lambda w: _t(w).test_cmd(op, id_of(w), union)



SCENARIOS += [
    Scenario("HWPT_INVALIDATE(paging HWPT)", on(IOMMUFD, iu.IOMMU_HWPT_INVALIDATE),
             _hwpt(), _invalidate, kernels=("6.12",), expect=errno.ENOENT),
    Scenario("HWPT_INVALIDATE(paging HWPT)", on(IOMMUFD, iu.IOMMU_HWPT_INVALIDATE),
             _hwpt(), _invalidate, kernels=("7.0",), expect=errno.EINVAL),
    Scenario("IOAS_CHANGE_PROCESS", on(IOMMUFD, iu.IOMMU_IOAS_CHANGE_PROCESS),
             _changed_process, lambda w: w.procs[1].ioctl(
                 _t(w).fd, iu.IOMMU_IOAS_CHANGE_PROCESS, iu.IOAS_CHANGE_PROCESS.pack(8, 0)),
             kernels=("7.0",)),
    Scenario("TEST MOCK_DOMAIN_FLAGS", on(SELFTEST, OP_MOCK_DOMAIN_FLAGS), _ioas(0, True),
             lambda w: _t(w).mock_domain(w.h["ioas"], MOCK_FLAGS_DEVICE_NO_DIRTY), ("mock",)),
    Scenario("TEST MD_CHECK_MAP", on(SELFTEST, OP_MD_CHECK_MAP), _ioas(1, True),
             lambda w: _t(w).check_map(w.h["devs"][0][1], IOVA, w.h["buf"], BUF), ("mock",)),
    Scenario("TEST MD_CHECK_IOTLB", on(SELFTEST, OP_MD_CHECK_IOTLB), _ioas(1, True),
             _test_op(OP_MD_CHECK_IOTLB, lambda w: w.h["devs"][0][1], bytes(8)), ("mock",),
             expect=errno.ENOENT),
    Scenario("TEST SET_TEMP_MEMORY_LIMIT", on(SELFTEST, OP_SET_TEMP_MEMORY_LIMIT), _ioas(),
             _test_op(OP_SET_TEMP_MEMORY_LIMIT, lambda w: 0, struct.pack("<I", 64)),
             ("mock",)),
    Scenario("compat VFIO_GET_API_VERSION", on(COMPAT, vu.VFIO_GET_API_VERSION), _compat,
             lambda w: w.p.ioctl(_t(w).fd, vu.VFIO_GET_API_VERSION)),
    Scenario("compat VFIO_CHECK_EXTENSION(DMA_CC)", on(COMPAT, vu.VFIO_CHECK_EXTENSION),
             _compat, lambda w: w.p.ioctl(_t(w).fd, vu.VFIO_CHECK_EXTENSION,
                                          vu.VFIO_DMA_CC_IOMMU)),
    Scenario("VFIO_GET_API_VERSION", on(CONTAINER, vu.VFIO_GET_API_VERSION), _vfio(iommu=V2),
             lambda w: w.p.ioctl(w.h["c"], vu.VFIO_GET_API_VERSION), DEV_PLATFORMS),
    Scenario("VFIO_CHECK_EXTENSION(DMA_CC)", on(CONTAINER, vu.VFIO_CHECK_EXTENSION),
             _vfio(iommu=V2), lambda w: w.p.ioctl(w.h["c"], vu.VFIO_CHECK_EXTENSION,
                                                  vu.VFIO_DMA_CC_IOMMU), DEV_PLATFORMS),
    Scenario("VFIO_GROUP_GET_STATUS", on(GROUP, vu.VFIO_GROUP_GET_STATUS), _vfio(),
             lambda w: w.p.ioctl(w.h["g"], vu.VFIO_GROUP_GET_STATUS,
                                 bytearray(vu.GROUP_STATUS.pack(8, 0))), DEV_PLATFORMS),
    Scenario("group device fd VFIO_DEVICE_GET_INFO", on(VFIO_PCI, vu.VFIO_DEVICE_GET_INFO),
             _device_fd, _device_info, DEV_PLATFORMS),
    Scenario("group device fd VFIO_DEVICE_GET_REGION_INFO(BAR0)",
             on(VFIO_PCI, vu.VFIO_DEVICE_GET_REGION_INFO), _device_fd, _region_info,
             DEV_PLATFORMS),
    Scenario("cdev VFIO_DEVICE_GET_INFO", on(VFIO_PCI, vu.VFIO_DEVICE_GET_INFO),
             _bound_cdev, _device_info, DEV_PLATFORMS),
    Scenario("cdev VFIO_DEVICE_GET_REGION_INFO(BAR0)",
             on(VFIO_PCI, vu.VFIO_DEVICE_GET_REGION_INFO), _bound_cdev, _region_info,
             DEV_PLATFORMS),
    Scenario("VFIO_GROUP_GET_DEVICE_FD(iommufd)", on(GROUP, vu.VFIO_GROUP_GET_DEVICE_FD),
             _group_on_iommufd, lambda w: w.p.ioctl(
                 w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:01.0\0")),
             DEV_PLATFORMS),
    Scenario("open(/dev/vfio/<group>)", on(OPEN, "/dev/vfio/<group>"),
             _vfio(container=False, group=False), lambda w: w.p.open(
                 f"/dev/vfio/{w.m.devices['0000:00:01.0'].iommu_group}"), DEV_PLATFORMS),
    Scenario("open(/dev/vfio/vfio, IOMMUFD_VFIO_CONTAINER)",
             on(OPEN, "/dev/vfio/vfio (iommufd)"), _iommufd_container,
             lambda w: w.p.open("/dev/vfio/vfio"), DEV_PLATFORMS),
]


# -- process calls ----------------------------------------------------------------------------
MM_PLATFORMS = ("mock",)  # the address space is the same on every platform
HUGE = 2 << 20
_PAGE_FAULTS = ("alloc_pages(page fault)",)  # mm_populate ignores a failed fault
_FILE_FAULTS = ("shmem_alloc_folio",)
_COW_FAULTS = ("alloc_pages(copy on write)",)


def _proc(*, ram: str = "256M", memfd: int | str | None = None, hugetlb: str | None = None,
          files: int = 0, device: bool = False) -> Callable[[str, str], World]:
    """One process; ``memfd``: a memfd of that size (``h["memfd"]``, hugetlb pages of
    ``hugetlb``) with its pages made (``h["memfd_va"]``); ``files``: that many fds of
    /dev/iommu open; ``device``: device 0's fd from its group (``h["dev"]``)."""
    def setup(platform: str, kernel: str) -> World:
        w = _device_fd(platform, kernel) if device else new_world(platform, kernel, ram=ram)
        for _ in range(files):
            w.p.open("/dev/iommu")
        if memfd is not None:
            w.h["memfd"] = w.p.memfd_create("guest", memfd, hugetlb)
            va = w.h["memfd_va"] = w.p.mmap(memfd, fd=w.h["memfd"], shared=True)
            w.p.write(va, b"\1" * 64)
        return w
    return setup


def _mmap(length: int, backing: str = "anon", *, populate: bool = False, shared: bool = False,
          fd: str | None = None, private: bool = False) -> Callable[[World], object]:
    def op(w: World) -> object:
        return w.p.mmap(length, backing, populate=populate, shared=shared, private=private,
                        fd=None if fd is None else w.h[fd])
    return op


def _mapped(platform: str, kernel: str) -> World:
    """A populated anonymous buffer (``h["buf"]``)."""
    w = new_world(platform, kernel)
    w.h["buf"] = w.p.mmap(BUF, populate=True)
    return w


def _forkable(platform: str, kernel: str) -> World:
    """A process with private, shared and memfd memory written and /dev/iommu open."""
    w = _proc(memfd=BUF)(platform, kernel)
    w.h["buf"] = w.p.mmap(BUF, populate=True)
    w.h["shared"] = w.p.mmap(BUF, shared=True)
    w.p.write(w.h["shared"], b"\2" * 64)
    w.p.open("/dev/iommu")
    return w


def _pinned(platform: str, kernel: str) -> World:
    """The buffer pinned by an IOAS map into a domain: fork copies it for the child."""
    return _ioas(1, True)(platform, kernel)


def _fork(w: World) -> object:
    w.procs.append(w.p.fork())
    return None


def _child(platform: str, kernel: str) -> World:
    """:func:`_forkable` and a child of it (``w.procs[1]``)."""
    w = _forkable(platform, kernel)
    w.procs.append(w.p.fork())
    return w


def _fork_keeps_pages_shared(s: State) -> State:
    """``dup_mmap`` write-protects the parent's anonymous pages VMA by VMA as it shares
    them (``folio_try_dup_anon_rmap`` clears PageAnonExclusive), and a fork that fails
    later does not give that back: the parent's next write finds the page mapped once
    and reuses it (``do_wp_page``). So a failed fork may leave the parent's pages not
    exclusive, and nothing else."""
    procs = [(*p[:4], [(*v[:7], None, *v[8:]) for v in p[4]], *p[5:]) for p in s["procs"]]
    return {**s, "procs": procs}


def _first_cut_stays(s: State) -> State:
    """``vms_gather_munmap_vmas`` splits the VMA at the start of the range, then at its
    end; when the second ``__split_vma`` fails, the first cut stays (its error path only
    puts back what it detached). So a VMA may be left in two pieces, end to end: they
    are compared as the one VMA they were."""
    def merged(vmas: list[Any]) -> list[Any]:
        out: list[Any] = []
        for v in vmas:
            last = out[-1] if out else None
            if last is not None and last[1] == v[0] and last[2:5] == v[2:5] \
                    and last[6] == v[6]:
                out[-1] = (last[0], v[1], *last[2:5], last[5] + v[5], last[6],
                           last[7] + v[7], tuple(sorted(last[8] + v[8])))
            else:
                out.append(v)
        return out
    return {**s, "procs": [(*p[:4], merged(p[4]), *p[5:]) for p in s["procs"]]}


def _fd_table_stays(s: State) -> State:
    """A fd table ``expand_files`` made larger stays so when the call fails after it
    (nothing shrinks a ``files_struct``'s table): the size may differ, nothing else."""
    return {**s, "procs": [p[:-1] for p in s["procs"]]}


SCENARIOS += [
    Scenario("mmap(anon)", on(MMAP, "anon"), _proc(), _mmap(BUF), MM_PLATFORMS),
    Scenario("mmap(anon, MAP_POPULATE)", on(MMAP, "anon"), _proc(),
             _mmap(BUF, populate=True), MM_PLATFORMS, absorbs=_PAGE_FAULTS),
    Scenario("mmap(thp 4M, MAP_POPULATE)", on(MMAP, "thp"), _proc(),
             _mmap(2 * HUGE, "thp", populate=True), MM_PLATFORMS, absorbs=_PAGE_FAULTS),
    Scenario("mmap(hugetlb-2M)", on(MMAP, "hugetlb-2M"), _proc(),
             _mmap(2 * HUGE, "hugetlb-2M"), MM_PLATFORMS),
    Scenario("mmap(hugetlb-1G)", on(MMAP, "hugetlb-1G"), _proc(ram="2G"),
             _mmap(1 << 30, "hugetlb-1G"), MM_PLATFORMS),
    Scenario("mmap(anon shared, MAP_POPULATE)", on(MMAP, "anon shared"), _proc(),
             _mmap(BUF, shared=True, populate=True), MM_PLATFORMS, absorbs=_FILE_FAULTS),
    Scenario("mmap(hugetlb-2M shared)", on(MMAP, "hugetlb shared"), _proc(),
             _mmap(2 * HUGE, "hugetlb-2M", shared=True), MM_PLATFORMS),
    Scenario("mmap(memfd, MAP_POPULATE)", on(MMAP, "memfd"), _proc(memfd=BUF),
             _mmap(BUF, fd="memfd", populate=True), MM_PLATFORMS, absorbs=_FILE_FAULTS),
    Scenario("mmap(memfd MAP_PRIVATE, MAP_POPULATE)", on(MMAP, "memfd private"),
             _proc(memfd=BUF), _mmap(BUF, fd="memfd", private=True, populate=True),
             MM_PLATFORMS, absorbs=_FILE_FAULTS + _COW_FAULTS),
    Scenario("mmap(memfd hugetlb-2M)", on(MMAP, "memfd hugetlb"),
             _proc(memfd="4M", hugetlb="2M"), _mmap(2 * HUGE, fd="memfd"), MM_PLATFORMS),
    Scenario("mmap(memfd hugetlb-2M MAP_PRIVATE)", on(MMAP, "memfd hugetlb"),
             _proc(memfd="4M", hugetlb="2M"), _mmap(2 * HUGE, fd="memfd", private=True),
             MM_PLATFORMS),
    Scenario("mmap(vfio-pci BAR0)", on(MMAP, "device region"), _proc(device=True),
             _mmap(PAGE, fd="dev"), DEV_PLATFORMS),
    Scenario("munmap(a whole VMA)", on(PROC, "munmap"), _mapped,
             lambda w: w.p.munmap(w.h["buf"], BUF), MM_PLATFORMS),
    Scenario("munmap(the head of a VMA)", on(PROC, "munmap"), _mapped,
             lambda w: w.p.munmap(w.h["buf"], PAGE), MM_PLATFORMS),
    Scenario("munmap(the middle of a VMA)", on(PROC, "munmap"), _mapped,
             lambda w: w.p.munmap(w.h["buf"] + PAGE, PAGE), MM_PLATFORMS,
             relax=_first_cut_stays),
    Scenario("fork", on(PROC, "fork"), _forkable, _fork, MM_PLATFORMS,
             relax=_fork_keeps_pages_shared),
    Scenario("fork(pinned pages)", on(PROC, "fork"), _pinned, _fork, MM_PLATFORMS,
             relax=_fork_keeps_pages_shared),
    Scenario("fork(a fd past NR_OPEN_DEFAULT)", on(PROC, "fork"), _proc(files=62), _fork,
             MM_PLATFORMS),
    Scenario("open(/dev/iommu, the fd table full)", on(OPEN, "/dev/iommu"), _proc(files=61),
             lambda w: w.p.open("/dev/iommu"), MM_PLATFORMS, relax=_fd_table_stays),
    Scenario("memfd_create", on(PROC, "memfd_create"), _proc(),
             lambda w: w.p.memfd_create("guest", BUF), MM_PLATFORMS),
    Scenario("memfd_create(hugetlb 2M)", on(PROC, "memfd_create"), _proc(),
             lambda w: w.p.memfd_create("guest", "4M", "2M"), MM_PLATFORMS),
    Scenario("ftruncate(grow)", on(PROC, "ftruncate"), _proc(memfd=BUF),
             lambda w: w.p.ftruncate(w.h["memfd"], 2 * BUF), MM_PLATFORMS),
    Scenario("ftruncate(shrink)", on(PROC, "ftruncate"), _proc(memfd=BUF),
             lambda w: w.p.ftruncate(w.h["memfd"], PAGE), MM_PLATFORMS),
    Scenario("close(/dev/iommu, an IOAS mapped into a domain)", on(PROC, "close"),
             _ioas(1, True), lambda w: w.p.close(_t(w).fd)),
    Scenario("close(a type1 container's group)", on(PROC, "close"),
             _vfio(iommu=V2, mapped=True), lambda w: w.p.close(w.h["g"]), DEV_PLATFORMS),
    Scenario("close(a bound device cdev)", on(PROC, "close"), _ioas(1, True),
             lambda w: w.p.close(w.h["cdevs"][0]), DEV_PLATFORMS),
    Scenario("exit(a forked child)", on(PROC, "exit"), _child,
             lambda w: w.procs[1].exit(), MM_PLATFORMS),
]


# -- vfio-pci: the device side (edu) ----------------------------------------------------------
EDU = "0000:00:01.0"
_TRIGGER = vu.VFIO_IRQ_SET_ACTION_TRIGGER
_EVENTFD = vu.VFIO_IRQ_SET_DATA_EVENTFD


def _edu(irq: str = "", *, cdev: bool = False, device: bool = True
         ) -> Callable[[str, str], World]:
    """QEMU's edu device alone in a group: its fd from the group in a type1v2 container
    (``h["dev"]``, ``h["g"]``), or with ``cdev`` its cdev bound to /dev/iommu; an eventfd
    (``h["efd"]``). ``irq``: "intx" INTx enabled with the eventfd as trigger, "msi" MSI
    enabled with no vector signalled yet (fd -1). Without ``device``, no device fd."""
    def setup(platform: str, kernel: str) -> World:
        w = new_world(platform, kernel, devices=1, model="edu")
        dev = w.m.devices[EDU]
        if cdev:
            t = Fd(w, w.p.open("/dev/iommu"))
            w.h["t"] = t
            w.h["dev"] = w.p.open("/dev/vfio/devices/vfio0")
            _bind_fd(w, w.h["dev"])
            _attach_pt(w, w.h["dev"], t.ioas_alloc())
        else:
            w.h["c"] = w.p.open("/dev/vfio/vfio")
            w.h["g"] = w.p.open(f"/dev/vfio/{dev.iommu_group}")
            w.p.ioctl(w.h["g"], vu.VFIO_GROUP_SET_CONTAINER,
                      bytearray(struct.pack("<i", w.h["c"])))
            w.p.ioctl(w.h["c"], vu.VFIO_SET_IOMMU, V2)
            if not device:
                return w
            w.h["dev"] = w.p.ioctl(w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD,
                                   bytearray(EDU.encode() + b"\0"))
        w.h["efd"] = w.p.eventfd()
        if irq == "intx":
            _set_irqs(w, _EVENTFD | _TRIGGER, vu.VFIO_PCI_INTX_IRQ_INDEX, 0, 1, w.h["efd"])
        elif irq == "msi":
            _set_irqs(w, _EVENTFD | _TRIGGER, vu.VFIO_PCI_MSI_IRQ_INDEX, 0, 1, -1)
        return w
    return setup


def _set_irqs(w: World, flags: int, index: int, start: int, count: int,
              *fds: int) -> object:
    data = b"".join(struct.pack("<i", fd) for fd in fds)
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_SET_IRQS, bytearray(
        vu.IRQ_SET.pack(vu.IRQ_SET.size + len(data), flags, index, start, count) + data))


def _irqs(flags: int, index: int, start: int, count: int, *fds: str | int
          ) -> Callable[[World], object]:
    """SET_IRQS with ``fds`` (a handle's name, or a number)."""
    return lambda w: _set_irqs(w, flags, index, start, count,
                               *(w.h[f] if isinstance(f, str) else f for f in fds))


def _irq_info(w: World) -> object:
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_GET_IRQ_INFO, bytearray(
        vu.IRQ_INFO.pack(vu.IRQ_INFO.size, 0, vu.VFIO_PCI_INTX_IRQ_INDEX, 0)))


def _hot_reset_info(w: World) -> object:
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, bytearray(
        vu.HOT_RESET_INFO.pack(vu.HOT_RESET_INFO.size + 64, 0, 0) + bytes(64)))


def _hot_reset(w: World) -> object:
    """PCI_HOT_RESET with the device's group fd (a device cdev gives none)."""
    fds = b"" if "g" not in w.h else struct.pack("<i", w.h["g"])
    return w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_PCI_HOT_RESET, bytearray(
        vu.HOT_RESET.pack(vu.HOT_RESET.size + len(fds), 0, len(fds) // 4) + fds))


def _msi_doorbell_stays(s: State) -> State:
    """arm64: ``iommu_dma_prepare_msi`` maps the ITS doorbell page into the device's
    domain and keeps it in the cookie's ``msi_page_list`` until the domain is freed
    (``iommu_put_dma_cookie``), or (7.0, an iommufd HWPT) in the HWPT's
    ``present_sw_msi``; ``pci_free_irq_vectors`` after a failed MSI enable does not
    unmap it. So leaves in the software MSI window may appear, and the cookie
    may hold a doorbell page (which :mod:`.state` tells from a HWPT's cookie holding
    none): the cookie is not compared."""
    def kept(leaves: Any) -> Any:
        if not isinstance(leaves, list):
            return leaves
        return [e for e in leaves
                if not (isinstance(e[0], int) and
                        MSI_IOVA_BASE <= e[0] < MSI_IOVA_BASE + MSI_IOVA_LENGTH)]
    if "domains" not in s:
        return s
    return {**s, "domains": {k: (d[0], kept(d[1]), d[2], None, *d[4:])
                             for k, d in s["domains"].items()}}


_INTX, _MSI, _REQ = (vu.VFIO_PCI_INTX_IRQ_INDEX, vu.VFIO_PCI_MSI_IRQ_INDEX,
                     vu.VFIO_PCI_REQ_IRQ_INDEX)
SCENARIOS += [
    Scenario("VFIO_GROUP_GET_DEVICE_FD(edu: MSI capability)",
             on(GROUP, vu.VFIO_GROUP_GET_DEVICE_FD), _edu(device=False),
             lambda w: w.p.ioctl(w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD,
                                 bytearray(b"0000:00:01.0\0")), DEV_PLATFORMS),
    Scenario("edu VFIO_DEVICE_GET_IRQ_INFO(INTx)", on(VFIO_PCI, vu.VFIO_DEVICE_GET_IRQ_INFO),
             _edu(), _irq_info, DEV_PLATFORMS),
    Scenario("edu SET_IRQS(INTx trigger eventfd: enable)", on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS),
             _edu(), _irqs(_EVENTFD | _TRIGGER, _INTX, 0, 1, "efd"), DEV_PLATFORMS),
    Scenario("edu SET_IRQS(INTx trigger eventfd: replace)",
             on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS), _edu("intx"),
             _irqs(_EVENTFD | _TRIGGER, _INTX, 0, 1, "efd"), DEV_PLATFORMS),
    Scenario("edu SET_IRQS(INTx trigger none: disable)", on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS),
             _edu("intx"), _irqs(vu.VFIO_IRQ_SET_DATA_NONE | _TRIGGER, _INTX, 0, 0),
             DEV_PLATFORMS),
    Scenario("edu SET_IRQS(INTx unmask eventfd)", on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS),
             _edu("intx"),
             _irqs(_EVENTFD | vu.VFIO_IRQ_SET_ACTION_UNMASK, _INTX, 0, 1, "efd"),
             DEV_PLATFORMS),
    Scenario("edu SET_IRQS(MSI trigger eventfd: enable)", on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS),
             _edu(), _irqs(_EVENTFD | _TRIGGER, _MSI, 0, 1, "efd"), DEV_PLATFORMS,
             relax=_msi_doorbell_stays),
    Scenario("edu SET_IRQS(MSI trigger eventfd: vector 0 of enabled MSI)",
             on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS), _edu("msi"),
             _irqs(_EVENTFD | _TRIGGER, _MSI, 0, 1, "efd"), DEV_PLATFORMS),
    Scenario("edu SET_IRQS(REQ trigger eventfd)", on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS),
             _edu(), _irqs(_EVENTFD | _TRIGGER, _REQ, 0, 1, "efd"), DEV_PLATFORMS),
    Scenario("edu cdev SET_IRQS(MSI trigger eventfd: enable)",
             on(VFIO_PCI, vu.VFIO_DEVICE_SET_IRQS), _edu(cdev=True),
             _irqs(_EVENTFD | _TRIGGER, _MSI, 0, 1, "efd"), DEV_PLATFORMS,
             relax=_msi_doorbell_stays),
    # no function of the model has a reset method (edu is conventional PCI without PM
    # capability): vfio_pci_ioctl_reset refuses before anything is allocated
    Scenario("edu VFIO_DEVICE_RESET", on(VFIO_PCI, vu.VFIO_DEVICE_RESET), _edu(),
             lambda w: w.p.ioctl(w.h["dev"], vu.VFIO_DEVICE_RESET), DEV_PLATFORMS,
             expect=errno.EINVAL),
    # on the root bus with no slot: ENODEV from the probe, before the kcalloc of the
    # devices (info) or of the group fds and files (reset)
    Scenario("edu VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
             on(VFIO_PCI, vu.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO), _edu(), _hot_reset_info,
             DEV_PLATFORMS, expect=errno.ENODEV),
    Scenario("edu VFIO_DEVICE_PCI_HOT_RESET(group fd)",
             on(VFIO_PCI, vu.VFIO_DEVICE_PCI_HOT_RESET), _edu(), _hot_reset, DEV_PLATFORMS,
             expect=errno.ENODEV),
    Scenario("edu cdev VFIO_DEVICE_PCI_HOT_RESET(no group fd)",
             on(VFIO_PCI, vu.VFIO_DEVICE_PCI_HOT_RESET), _edu(cdev=True), _hot_reset,
             DEV_PLATFORMS, expect=errno.ENODEV),
]


# -- Linux 7.0's vIOMMU ----------------------------------------------------------------------
_VIOMMU_TYPE = {"mock": 0xDEADBEEF, "arm64-smmuv3": ih.IOMMU_VIOMMU_TYPE_ARM_SMMUV3}
_VIOMMU_PLATFORMS = ("mock", "arm64-smmuv3")


def _viommu_alloc(w: World) -> int:
    out = _t(w).ioctl(iu.IOMMU_VIOMMU_ALLOC, iu.VIOMMU_ALLOC.pack(
        40, 0, _VIOMMU_TYPE[w.m.platform], w.h["devs"][0][0], w.h["hwpt"], 0, 0, 0, 0))
    return int(iu.VIOMMU_ALLOC.unpack(out)[5])


def _viommu(vdev: bool = False) -> Callable[[str, str], World]:
    """A nest-parent HWPT (``h["hwpt"]``) with a device, a vIOMMU on it (``h["viommu"]``)
    and, with ``vdev``, the device's vDEVICE at virtual id 0x99."""
    def setup(platform: str, kernel: str) -> World:
        w = _hwpt(iu.IOMMU_HWPT_ALLOC_NEST_PARENT)(platform, kernel)
        w.h["viommu"] = _viommu_alloc(w)
        if vdev:
            _vdevice_alloc(w)
        return w
    return setup


def _vdevice_alloc(w: World) -> object:
    return _t(w).ioctl(iu.IOMMU_VDEVICE_ALLOC, iu.VDEVICE_ALLOC.pack(
        24, w.h["viommu"], w.h["devs"][0][0], 0, 0x99))


def _veventq_alloc(w: World) -> object:
    return _t(w).ioctl(iu.IOMMU_VEVENTQ_ALLOC, iu.VEVENTQ_ALLOC.pack(
        32, 0, w.h["viommu"], 0xBEEFBEEF, 4, 0, 0, 0))


def _nested_on_viommu(w: World) -> bytearray:
    """HWPT_ALLOC of a nested HWPT on the vIOMMU: the selftest's data on the mock, a
    guest S1 STE on the SMMUv3."""
    data = w.h["bitmap"]
    if w.m.platform == "mock":
        w.p.write(data, struct.pack("<I", 0xBADBEEF))
        dtype, n = 0xDEAD, 4
    else:  # V, Config S1, S1ContextPtr 0x8000; S1DSS SSID0
        w.p.write(data, struct.pack("<QQ", 0x8000 | (5 << 1) | 1, 2))
        dtype, n = ih.IOMMU_HWPT_DATA_ARM_SMMUV3, 16
    return _t(w).ioctl(iu.IOMMU_HWPT_ALLOC, iu.HWPT_ALLOC.pack(
        48, 0, w.h["devs"][0][0], w.h["viommu"], 0, 0, dtype, n, data, 0, 0))


def _viommu_invalidate(w: World) -> object:
    """HWPT_INVALIDATE of one command through the vIOMMU: the selftest's FLAG_ALL on the
    mock's vDEVICE, TLBI_NH_ALL on the SMMUv3."""
    data = w.h["bitmap"]
    if w.m.platform == "mock":
        w.p.write(data, struct.pack("<III", 1, 0x99, 0))
        dtype, n = 0xDEADBEEF, 12
    else:
        w.p.write(data, struct.pack("<QQ", 0x10, 0))
        dtype, n = ih.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16
    return _t(w).ioctl(iu.IOMMU_HWPT_INVALIDATE,
                       iu.HWPT_INVALIDATE.pack(32, w.h["viommu"], data, dtype, n, 1, 0))


def _triggered(platform: str, kernel: str) -> World:
    """The mock device on a nested HWPT of the vIOMMU, with its vDEVICE and a vEVENTQ of
    the selftest type."""
    w = _viommu(vdev=True)(platform, kernel)
    out = _nested_on_viommu(w)
    nested = int(iu.HWPT_ALLOC.unpack(out)[4])
    _t(w).mock_domain_replace(w.h["stdevs"][0], nested)
    _veventq_alloc(w)
    return w


SCENARIOS += [
    Scenario("VIOMMU_ALLOC", on(IOMMUFD, iu.IOMMU_VIOMMU_ALLOC),
             _hwpt(iu.IOMMU_HWPT_ALLOC_NEST_PARENT), _viommu_alloc, _VIOMMU_PLATFORMS,
             kernels=("7.0",)),
    Scenario("VDEVICE_ALLOC", on(IOMMUFD, iu.IOMMU_VDEVICE_ALLOC), _viommu(),
             _vdevice_alloc, _VIOMMU_PLATFORMS, kernels=("7.0",)),
    Scenario("VEVENTQ_ALLOC", on(IOMMUFD, iu.IOMMU_VEVENTQ_ALLOC), _viommu(),
             _veventq_alloc, _VIOMMU_PLATFORMS, kernels=("7.0",)),
    Scenario("HWPT_ALLOC(nested on a vIOMMU)", on(IOMMUFD, iu.IOMMU_HWPT_ALLOC),
             _viommu(), _nested_on_viommu, _VIOMMU_PLATFORMS, kernels=("7.0",)),
    Scenario("HWPT_INVALIDATE(vIOMMU)", on(IOMMUFD, iu.IOMMU_HWPT_INVALIDATE),
             _viommu(vdev=True), _viommu_invalidate, _VIOMMU_PLATFORMS, kernels=("7.0",)),
    Scenario("TEST DEV_CHECK_CACHE", on(SELFTEST, OP_DEV_CHECK_CACHE), _ioas(1),
             _test_op(OP_DEV_CHECK_CACHE, lambda w: w.h["devs"][0][0],
                      struct.pack("<II", 0, 0xBADDAD)), ("mock",), kernels=("7.0",)),
    Scenario("TEST DEV_CHECK_CACHE", on(SELFTEST, OP_DEV_CHECK_CACHE), _ioas(1),
             _test_op(OP_DEV_CHECK_CACHE, lambda w: w.h["devs"][0][0], bytes(8)),
             ("mock",), kernels=("6.12",), expect=errno.EOPNOTSUPP),
    Scenario("TEST TRIGGER_VEVENT", on(SELFTEST, OP_TRIGGER_VEVENT), _triggered,
             lambda w: _t(w).test_cmd(OP_TRIGGER_VEVENT, 0,
                                      struct.pack("<I", w.h["devs"][0][0])),
             ("mock",), kernels=("7.0",)),
    Scenario("TEST TRIGGER_VEVENT", on(SELFTEST, OP_TRIGGER_VEVENT), _ioas(1),
             _test_op(OP_TRIGGER_VEVENT, lambda w: 0, bytes(4)), ("mock",),
             kernels=("6.12",), expect=errno.EOPNOTSUPP),
]
