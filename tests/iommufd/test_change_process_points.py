"""IOMMU_IOAS_CHANGE_PROCESS's allocation points (Linux 7.0, drivers/iommu/iommufd/ioas.c).

``iommufd_take_all_iova_rwsem`` stores every IOAS, in id order, in a local xarray
(``xa_store(ioas_list, index, ioas, GFP_KERNEL)``) before the areas are looked at: its
nodes are the call's only allocations, and an xarray retries a failed node, so none
fails the call. The charge that moves (``charge_current``) allocates nothing; when it
is refused (ENOMEM over RLIMIT_MEMLOCK) nothing changes.
"""

from __future__ import annotations

import errno

import pytest

from iommulab.iommufd import uapi as u

from ..failnth.scenarios import BUF, IOVA, _attach, _iommufd, _t
from ..failnth.state import diff, snapshot
from ..failnth.sweep import World, sites, sweep

NODE = "xas_alloc(ioas_list)"


def _change(w: World) -> None:
    _t(w).ioctl(u.IOMMU_IOAS_CHANGE_PROCESS, u.IOAS_CHANGE_PROCESS.pack(8, 0))


def _world(platform: str = "mock", *, ioases: int = 2, keep: tuple[int, ...] = (),
           child: bool = True, **proc: object) -> World:
    """``ioases`` IOASes (only the ids in ``keep`` left, when given), a memfd mapped into
    the first with a device attached, and (``child``) the call made by a forked child,
    so the charge moves."""
    w = _iommufd(platform, "7.0", **proc)
    t = _t(w)
    ids = [t.ioas_alloc() for _ in range(ioases)]
    for i in ids:
        if keep and i not in keep:
            t.destroy(i)
    first = keep[0] if keep else ids[0]
    _attach(w, first)
    mfd = w.p.memfd_create("guest", BUF)
    t.map_file(first, mfd, 0, BUF, IOVA)
    if child:
        w.procs.append(w.p.fork())
        w.procs.reverse()  # the child makes the call
        t.p = w.p
    return w


def test_one_node_for_ids_in_one_chunk() -> None:
    assert sites(_world, _change) == [NODE]


def test_nodes_as_the_ids_grow_the_tree() -> None:
    """IOAS 1 takes a node; IOAS 70 makes the tree two levels high: a root node and a
    node for its chunk."""
    assert sites(lambda: _world(ioases=70, keep=(1, 70)), _change) == [NODE] * 3


def test_the_nodes_come_before_the_file_check() -> None:
    """A map of user memory is refused (EINVAL) after every IOAS was stored."""
    w = _world(child=False)
    t = _t(w)
    t.map(t.ioas_alloc(), w.h["buf"], BUF)  # IOAS 2 is unused; 3 maps user memory
    fail = w.m.mem.fail_nth
    fail.log = []
    with pytest.raises(OSError) as e:
        _change(w)
    assert e.value.errno == errno.EINVAL and fail.log == [NODE]
    fail.log = None
    w.close()


@pytest.mark.parametrize("platform", ["mock", "x86-vtd", "arm64-smmuv3"])
def test_sweep_absorbs_every_node(platform: str) -> None:
    points = sweep(lambda: _world(platform), _change)
    assert [(p.site, p.errno) for p in points] == [(NODE, None)]


def test_a_refused_charge_leaves_no_trace() -> None:
    """The new owner over its limit: ENOMEM, and the pins stay charged where they were."""
    w = _world(child=False)
    other = w.m.spawn_process(memlock_limit=BUF // 2, uid=1001, cap_ipc_lock=False)
    for fd, f in w.p.files.items():
        other.files[fd] = f
        f.refs += 1
    w.procs.append(other)
    before = snapshot(w.m, w.procs)
    _t(w).p = other
    with pytest.raises(OSError) as e:
        _change(w)
    assert e.value.errno == errno.ENOMEM
    assert diff(before, snapshot(w.m, w.procs)) == []
    w.close()
