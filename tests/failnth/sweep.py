"""The fail-nth sweep of tools/testing/selftests/iommu/iommufd_fail_nth.c, over the model.

``sweep(setup, op)`` builds a world with ``setup``, then for n = 1, 2, … arms the
machine's :class:`~iommulab.mem.FailNth` to fail the n-th allocation point and runs
``op``. Each injected failure must give the kernel's errno for that point (ENOMEM for an
allocation, the caller's errno for an ``iommufd_should_fail()`` point) and leave the
world as it was (:func:`state.snapshot`; the table pages every live domain still holds,
:func:`state.check_tables`); the next n runs on the same world. Where the kernel carries
on after a failed allocation (a retried xarray node, a fallback buffer), ``op``
succeeds with the failure injected: the site must be one the kernel treats so
(:data:`SWALLOWED`) and the world is built again. The sweep ends at the first n that
``op`` does not reach, and then everything is closed and must be released: no pin,
no charge, no frame or table page beyond a fresh machine's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iommulab import Machine, Process

from .state import State, check_tables, diff, snapshot

__all__ = ["SWALLOWED", "Point", "World", "new_world", "site_errno", "sweep"]

#: ``iommufd_should_fail()`` sites and the errno their caller turns a failure into
SHOULD_FAIL_ERRNO = {
    "iommufd_get_object": errno.ENOENT,
    "iommufd_hwpt_alloc: iommufd_get_object": errno.EINVAL,  # the pt_id lookup
    "pfn_reader_user_pin": errno.EFAULT,
    "pages_to_xarray": errno.EINVAL,
    "iopt_table_enforce_dev_resv_regions": errno.EINVAL,
    "mock_domain_map_pages": errno.ENOENT,
    "iopt_pages_rw_page": errno.EINVAL,
    "temp_kmalloc": errno.ENOMEM,
    "pfn_reader_user_update_pinned": errno.ENOMEM,
}

#: Allocation points whose failure the caller reports as another errno than ENOMEM:
#: kernel/resource.c:__request_region returns NULL when its ``struct resource`` cannot be
#: had, which drivers/pci/pci.c:__pci_request_region turns into EBUSY
ALLOC_ERRNO = {
    "kzalloc(resource)": errno.EBUSY,
}

#: Allocation points whose failure the kernel absorbs (prefixes): an xarray node
#: allocation is retried; kvmalloc past a page falls back to vmalloc; temp_kmalloc
#: falls back to a page and then to the stack; vfio_batch_init falls back to a one-page
#: batch; unmap_unpin_fast falls back to the slow unmap; the reserved regions a driver
#: fails to allocate are left out (``iommu_get_resv_regions`` reports no error); 6.12's
#: fine-grained superpage probe is skipped; a nofail detach WARNs and goes on; a type1
#: detach keeps its IOVA list; a compatible domain that refuses the group is not used; a
#: THP fault whose folio cannot be had falls back to 4K pages (VM_FAULT_FALLBACK);
#: device_del does not check its KOBJ_REMOVE uevent; vfio_pci_core_enable goes on
#: without a stored config state when pci_store_saved_state fails.
SWALLOWED = (
    "xas_alloc(",
    "kvmalloc(",
    "kmalloc(temp_kmalloc",
    "kmalloc(PAGE_SIZE, temp_kmalloc",
    "__get_free_page(vfio_batch_init)",
    "kzalloc(vfio_regions)",
    "iommu_alloc_resv_region(",
    "vfio_test_domain_fgsp:",
    "__iommu_group_set_domain_nofail:",
    "vfio_iommu_type1_detach_group:",
    "device_del:",
    "vfio_iommu_type1_attach_group: iommu_attach_group(compatible)",
    "vma_alloc_folio(THP)",
    "kzalloc(pci_store_saved_state)",
)


def site_errno(site: str, overrides: dict[str, int] | None = None) -> int:
    """The errno the kernel returns when ``site`` fails."""
    if overrides and site in overrides:
        return overrides[site]
    if site.startswith("iommufd_should_fail("):
        return SHOULD_FAIL_ERRNO[site[len("iommufd_should_fail("):-1]]
    return ALLOC_ERRNO.get(site, errno.ENOMEM)


@dataclass
class World:
    """A machine, the processes whose state counts, and the handles ``op`` uses."""

    m: Machine
    procs: list[Process]
    h: dict[str, Any] = field(default_factory=dict)
    fresh_frames: int = 0  # frames (not page tables) a fresh machine holds
    fresh_tables: int = 0

    @property
    def p(self) -> Process:
        return self.procs[0]

    def close(self) -> None:
        """Every process exits; nothing may stay pinned, charged or allocated."""
        for p in self.procs:
            p.exit()
        m = self.m
        frames = m.mem.frames.total_frames - m.mem.frames.free_frames - m.mem.iommu_pages
        assert m.mem.pins.total == 0, f"{m.mem.pins.total} pins left"
        assert all(p.mm.locked_vm == 0 and p.mm.pinned_vm == 0 for p in self.procs)
        assert all(u.locked_vm == 0 for u in m.users.values())
        assert frames == self.fresh_frames, f"{frames - self.fresh_frames} frames leaked"
        assert m.mem.iommu_pages == self.fresh_tables, \
            f"{m.mem.iommu_pages - self.fresh_tables} table pages leaked"


def new_world(platform: str, kernel: str, *, devices: int = 0, ram: str = "256M",
              model: str | None = None, **proc: Any) -> World:
    """A machine with ``devices`` vfio-pci devices (of ``model``), each in its own group,
    and one process (``proc``: :meth:`Machine.spawn_process` arguments)."""
    m = Machine(platform, ram=ram, kernel=kernel)
    for i in range(devices):
        m.add_pci_device(f"0000:00:{i + 1:02x}.0", model=model)
    w = World(m, [])
    w.fresh_frames = m.mem.frames.total_frames - m.mem.frames.free_frames - m.mem.iommu_pages
    w.fresh_tables = m.mem.iommu_pages
    w.procs.append(m.spawn_process(**proc))
    return w


@dataclass
class Point:
    """One injected failure: the n-th point, its site, and the errno (None: absorbed)."""

    n: int
    site: str
    errno: int | None


def _check_world(w: World) -> None:
    w.m.mem._check()
    for p in w.procs:
        p.mm._check()


def sweep(setup: Callable[[], World], op: Callable[[World], object], *,
          errnos: dict[str, int] | None = None, absorbs: tuple[str, ...] = (),
          expect: int | None = None, relax: Callable[[State], State] | None = None,
          limit: int = 400) -> list[Point]:
    """Fail the 1st, 2nd, … allocation point of ``op`` until it succeeds untouched; the
    points met, in order (see the module docstring). ``absorbs``: sites whose failure
    this call's path absorbs besides :data:`SWALLOWED`. ``expect``: ``op`` ends by
    failing with this errno when nothing is injected (it must then leave no trace
    either). ``relax``: applied to both snapshots, for what the kernel leaves changed
    after a failed call (each use says where the kernel does so)."""
    def state(w: World) -> State:
        s = snapshot(w.m, w.procs)
        return relax(s) if relax is not None else s

    points: list[Point] = []
    w = setup()
    before = state(w)
    n = 1
    while True:
        assert n <= limit, f"more than {limit} failure points"
        fail = w.m.mem.fail_nth
        fail.arm(n)
        try:
            op(w)
        except OSError as e:
            fail.disarm()
            site = fail.fired
            if site is None and expect is not None and e.errno == expect:
                after = state(w)
                assert after == before, "the refused call left a trace: " + \
                    "; ".join(diff(before, after))
                break
            assert site is not None, f"n={n}: {e!r} without an injected failure"
            want = site_errno(site, errnos)
            assert e.errno == want, \
                f"n={n} at {site}: errno {errno.errorcode.get(e.errno or 0)}, the kernel " \
                f"returns {errno.errorcode[want]} ({e})"
            after = state(w)
            assert after == before, f"n={n} at {site} left a trace: " + \
                "; ".join(diff(before, after))
            check_tables(w.m, w.procs)
            _check_world(w)
            points.append(Point(n, site, e.errno))
        else:
            fail.disarm()
            if not fail.triggered:
                assert expect is None, f"n={n}: the call succeeded; the kernel refuses it"
                break
            site = fail.fired or ""
            assert site.startswith(SWALLOWED + absorbs), \
                f"n={n}: the failure at {site} was swallowed; the kernel fails the call"
            points.append(Point(n, site, None))
            check_tables(w.m, w.procs)
            w.close()
            w = setup()
            before = state(w)
        n += 1
    check_tables(w.m, w.procs)
    _check_world(w)
    w.close()
    return points


def sites(setup: Callable[[], World], op: Callable[[World], object]) -> list[str]:
    """The allocation points ``op`` reaches when nothing fails, in order."""
    w = setup()
    fail = w.m.mem.fail_nth
    fail.log = []
    try:
        op(w)
        return fail.log
    finally:
        fail.log = None
        w.close()
