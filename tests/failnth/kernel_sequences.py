"""The seven TEST_FAIL_NTH bodies of Linux 6.12's iommufd_fail_nth.c, over the model.

Each body makes the C test's calls in the C test's order on the ``mock`` platform and
returns 0, or -1 at the first call that fails, as the C does. :func:`run_fail_nth` runs a
body the way the C harness (``TEST_FAIL_NTH``, ``fail_nth_first``, ``fail_nth_next``,
``__fail_nth_enable``) does: iteration 0 without injection, then for n = 1, 2, … the
body again with the n-th allocation point after its ``fail_nth_enable()`` failed, the
fixture torn down and set up between runs, until a run ends with the failure not
injected. The process and its 2 MiB ``MAP_SHARED | MAP_ANONYMOUS`` buffer live across the
runs, as the C test process and its constructor's buffer do; each run opens its own
/dev/iommu fd.

After every run, with the fixture torn down (the access fd closed, the iommufd closed,
and ``teardown_iommufd``'s MD_CHECK_REFS of the buffer on a fresh fd), the machine must
hold what it held before the first run (:func:`iommulab.testing.leak_snapshot`) and
every ``_check()`` must pass (:func:`iommulab.testing.check_invariants`).
"""

from __future__ import annotations

import contextlib
import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from iommulab import Machine, Process
from iommulab.iommufd import uapi as u
from iommulab.iommufd.selftest import (
    MOCK_ACCESS_RW_SLOW_PATH,
    MOCK_ACCESS_RW_WRITE,
    MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES,
    OP_MD_CHECK_REFS,
)
from iommulab.testing import check_invariants, leak_snapshot

from ..iommufd.selftest_lib import MOCK_APERTURE_START, RW, Selftest
from .sweep import SWALLOWED, site_errno

__all__ = ["SEQUENCES", "FailNthRun", "Sequence", "logged_sites", "run_fail_nth"]

PAGE_SIZE = 4096
BUFFER_SIZE = 2 * 1024 * 1024  # setup_buffer(): the fail_nth test's buffer
FIXED = u.IOMMU_IOAS_MAP_FIXED_IOVA
RANGES_SIZE = 10 * 16  # struct iommu_iova_range ranges[10]
TMP_SIZE = 32 * 2  # uint16_t tmp[32]
TMP_BIG_SIZE = 4096 * 8  # uint64_t tmp_big[4096]
LIMIT = 400  # fail_nth_next: ASSERT_GT(400, iteration)


class Fixture(Selftest):
    """FIXTURE(basic_fail_nth) in one run: the test process, its buffer and stack arrays,
    ``fd`` (-1 until the body opens /dev/iommu) and ``access_id`` (0: none)."""

    def __init__(self, m: Machine, p: Process, buffer: int, stack: int, nth: int) -> None:
        self.m, self.p, self.buffer, self.stack = m, p, buffer, stack
        self.fd = -1
        self.access_id = 0
        self.nth = nth
        self.ignored = False  # an injected failure hit a call whose result is ignored

    def unchecked(self, call: Callable[[], object]) -> None:
        """A call whose result the C body does not look at."""
        fail = self.m.mem.fail_nth
        before = fail.triggered
        with contextlib.suppress(OSError):
            call()
        self.ignored |= fail.triggered and not before

    def fail_nth_enable(self) -> None:
        """``__fail_nth_enable``: arm the n-th point from here on (nothing in run 0)."""
        if self.nth:
            self.m.mem.fail_nth.arm(self.nth)

    def open_iommufd(self) -> None:
        self.fd = self.p.open("/dev/iommu")

    def teardown(self) -> None:
        """FIXTURE_TEARDOWN(basic_fail_nth): close the access fd, then
        ``teardown_iommufd``: close the fd, open a new one, MD_CHECK_REFS of the buffer
        (every refcount back to the GUP baseline), close it."""
        if self.access_id:
            self.p.close(self.access_id)
            self.access_id = 0
        if self.fd == -1:
            return
        self.p.close(self.fd)
        self.fd = self.p.open("/dev/iommu")
        self.test_cmd(OP_MD_CHECK_REFS, 0, struct.pack("<QQI", BUFFER_SIZE, self.buffer, 0))
        self.p.close(self.fd)
        self.fd = -1


Body = Callable[[Fixture], None]


#: iommufd_device_auto_get_domain takes EINVAL from attaching to an existing automatic
#: HWPT as "not compatible" and allocates a new one: a failure there is absorbed
INCOMPATIBLE = ("iommufd_should_fail(iopt_table_enforce_dev_resv_regions)",)


@dataclass(frozen=True)
class Sequence:
    """One TEST_FAIL_NTH: its name, body (raising OSError where the C returns -1) and the
    sites whose failure its kernel path absorbs besides :data:`.sweep.SWALLOWED`."""

    name: str
    body: Body
    absorbs: tuple[str, ...] = ()


# -- the bodies ---------------------------------------------------------------------------------
def basic(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, basic): "Cover ioas.c"."""
    t.fail_nth_enable()
    t.open_iommufd()
    ioas = t.ioas_alloc()
    ranges = t.stack
    t.ioctl(u.IOMMU_IOAS_IOVA_RANGES, u.IOAS_IOVA_RANGES.pack(32, ioas, 10, 0, ranges, 0))
    t.p.write(ranges, u.IOVA_RANGE.pack(16 * 1024, BUFFER_SIZE + 16 * 1024 * 600 - 1))
    t.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, u.IOAS_ALLOW_IOVAS.pack(24, ioas, 1, 0, ranges))
    iova = t.map(ioas, t.buffer, BUFFER_SIZE)
    t.copy(ioas, ioas, iova, RANGES_SIZE, flags=RW)  # length = sizeof(ranges)
    t.unmap(ioas, iova, BUFFER_SIZE)
    # "Failure path of no IOVA to unmap": its result is not looked at
    t.unchecked(lambda: t.unmap(ioas, iova, BUFFER_SIZE))


def map_domain(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, map_domain): iopt_area_fill_domains() and
    iopt_area_fill_domain()."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    t.fail_nth_enable()
    md = t.mock_domain(ioas)
    t.map(ioas, t.buffer, 262144)
    t.destroy(md.stdev_id)
    t.mock_domain(ioas)


def map_two_domains(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, map_two_domains)."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    md = t.mock_domain(ioas)
    t.fail_nth_enable()
    md2 = t.mock_domain(ioas)
    t.map(ioas, t.buffer, 262144)
    t.destroy(md.stdev_id)
    t.destroy(md2.stdev_id)
    t.mock_domain(ioas)
    t.mock_domain(ioas)


def _create_access(t: Fixture, ioas: int, flags: int) -> None:
    t.access_id = t.create_access(ioas, flags)  # written only on success, as in the C


def access_rw(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, access_rw)."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    iova = t.map(ioas, t.buffer, 262144)
    t.fail_nth_enable()
    _create_access(t, ioas, 0)
    tmp, tmp_big = t.stack, t.stack + PAGE_SIZE
    for flags in (0, MOCK_ACCESS_RW_WRITE, MOCK_ACCESS_RW_SLOW_PATH,
                  MOCK_ACCESS_RW_SLOW_PATH | MOCK_ACCESS_RW_WRITE):
        t.access_rw(t.access_id, iova, tmp, TMP_SIZE, flags)
    t.access_rw(t.access_id, iova, tmp_big, TMP_BIG_SIZE, MOCK_ACCESS_RW_SLOW_PATH)
    t.p.close(t.access_id)
    t.access_id = 0


def _pin_and_release(t: Fixture, iova: int) -> None:
    """ACCESS_PAGES of the whole buffer, DESTROY_ACCESS_PAGES, close the access."""
    item = t.access_pages(t.access_id, iova, BUFFER_SIZE, t.buffer)
    t.destroy_access_pages(t.access_id, item)
    t.p.close(t.access_id)
    t.access_id = 0


def access_pin(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, access_pin): "pages.c access functions"."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    iova = t.map(ioas, t.buffer, BUFFER_SIZE)
    _create_access(t, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    t.fail_nth_enable()
    _pin_and_release(t, iova)


def access_pin_domain(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, access_pin_domain): iopt_pages_fill_xarray()."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    t.set_temp_memory_limit(32)
    md = t.mock_domain(ioas)
    iova = t.map(ioas, t.buffer, BUFFER_SIZE)
    _create_access(t, ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
    t.fail_nth_enable()
    _pin_and_release(t, iova)
    t.destroy(md.stdev_id)


def device(t: Fixture) -> None:
    """TEST_FAIL_NTH(basic_fail_nth, device): "device.c"."""
    t.open_iommufd()
    ioas = t.ioas_alloc()
    ioas2 = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    t.map_fixed(ioas2, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    t.fail_nth_enable()
    md = t.mock_domain(ioas)
    info = t.stack  # struct iommu_test_hw_info, 8 bytes; IOMMU_HW_INFO_TYPE_DEFAULT
    t.ioctl(u.IOMMU_GET_HW_INFO, u.HW_INFO.pack(40, 0, md.idev_id, 8, info, 0, 0,
                                                b"\0" * 3, 0))
    hwpt = t.hwpt_alloc(md.idev_id, ioas)
    t.mock_domain_replace(md.stdev_id, ioas2)
    t.mock_domain_replace(md.stdev_id, hwpt)


SEQUENCES = [Sequence("basic", basic), Sequence("map_domain", map_domain),
             Sequence("map_two_domains", map_two_domains, INCOMPATIBLE),
             Sequence("access_rw", access_rw), Sequence("access_pin", access_pin),
             Sequence("access_pin_domain", access_pin_domain),
             Sequence("device", device, INCOMPATIBLE)]


# -- the harness --------------------------------------------------------------------------------
@dataclass
class FailNthRun:
    """What a sweep found: per injected run, the failed site and the errno the body saw
    (None: the body completed, the failure absorbed); ``steps`` runs with a failure."""

    name: str
    kernel: str
    points: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.points)


def _process(kernel: str) -> tuple[Machine, Process, int, int]:
    """The test process: its buffer (setup_buffer()) and room for its stack arrays. The
    buffer's pages exist from the start, as after the C test's run 0 faulted them in."""
    m = Machine("mock", ram="256M", kernel=kernel)
    p = m.spawn_process(cap_ipc_lock=True)
    buffer = p.mmap(BUFFER_SIZE, shared=True, populate=True)
    stack = p.mmap(16 * PAGE_SIZE, populate=True)
    return m, p, buffer, stack


def _run_once(seq: Sequence, m: Machine, p: Process, buffer: int, stack: int,
              nth: int) -> tuple[Fixture, OSError | None]:
    t = Fixture(m, p, buffer, stack, nth)
    try:
        seq.body(t)
    except OSError as e:  # the C body's "return -1"; anything else escapes the test
        return t, e
    finally:
        m.mem.fail_nth.disarm()
    return t, None


def run_fail_nth(seq: Sequence, kernel: str) -> FailNthRun:
    """TEST_FAIL_NTH's loop over ``seq`` (see the module docstring), checking after every
    run: a failed body failed at the injected point with that point's errno, and once
    torn down nothing is left (leak baseline, invariants)."""
    m, p, buffer, stack = _process(kernel)
    fresh = leak_snapshot(m, [p])
    fail = m.mem.fail_nth
    out = FailNthRun(seq.name, kernel)
    nth = 0
    while True:
        assert nth < LIMIT, f"{seq.name}: more than {LIMIT} iterations"
        t, err = _run_once(seq, m, p, buffer, stack, nth)
        injected = nth > 0 and fail.triggered
        site = fail.fired if injected else None
        t.teardown()
        leaks = fresh.diff(leak_snapshot(m, [p]))
        assert not leaks, f"{seq.name} n={nth} at {site}: " + "; ".join(leaks)
        check_invariants([m, p])
        if err is not None:
            assert site is not None, f"{seq.name} n={nth}: {err!r} without an injected failure"
            want = site_errno(site)
            assert err.errno == want, \
                f"{seq.name} n={nth} at {site}: errno " \
                f"{errno.errorcode.get(err.errno or 0)}, the kernel's is {errno.errorcode[want]}"
        elif site is not None and not t.ignored:
            assert site.startswith(SWALLOWED + seq.absorbs), \
                f"{seq.name} n={nth}: the failure at {site} was swallowed"
        if nth and not injected:
            return out
        if nth:
            assert site is not None
            out.points.append((site, None if err is None else err.errno))
        nth += 1


class LoggingFixture(Fixture):
    """A run 0 whose ``fail_nth_enable()`` starts the log of points reached."""

    log: list[str]

    def fail_nth_enable(self) -> None:
        self.log = []
        self.m.mem.fail_nth.log = self.log


def logged_sites(seq: Sequence, kernel: str) -> list[str]:
    """The points ``seq`` reaches after its ``fail_nth_enable()`` when nothing fails, in
    order (lab: :attr:`FailNth.log`); a sweep fails each of them in turn."""
    m, p, buffer, stack = _process(kernel)
    fail = m.mem.fail_nth
    t = LoggingFixture(m, p, buffer, stack, 0)
    try:
        seq.body(t)
        return t.log
    finally:
        fail.log = None
        t.teardown()
