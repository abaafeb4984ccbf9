"""The lab's one-step THP faults give what the kernel's batch-by-batch faults give.

``FrameAllocator.alloc_contiguous`` against ``n`` calls of ``alloc``, and a VFIO
MAP_DMA of THP memory with ``MmStruct.fast_faults`` on against the same map with it
off (the layered path, one batch refill and fault at a time): the same folios, the
same IOPTEs, the same allocator state and the same fault-injection points in order.
"""

from __future__ import annotations

import copy
import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Machine
from iommulab.mem import MAX_ORDER, FrameAllocator
from iommulab.vfio import uapi as u


def _state(fa: FrameAllocator) -> tuple[object, ...]:
    return tuple(frozenset(s) for s in fa._free), dict(fa._allocated), fa.free_frames


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 0, 3, 9, 10]), st.booleans()), max_size=40),
       st.sampled_from([0, 9, 10, MAX_ORDER]), st.integers(1, 2000))
def test_alloc_contiguous_is_n_allocs(ops: list[tuple[int, bool]], order: int, n: int) -> None:
    fa = FrameAllocator()
    fa.add_range(0x1000, 3 << MAX_ORDER)
    fa.add_range(5 << MAX_ORDER, 3000)
    held: list[tuple[int, int]] = []
    for o, free_one in ops:  # a used allocator: holes of several orders
        if free_one and held:
            fa.free(*held.pop(len(held) // 2))
        elif (pfn := fa.alloc(o)) is not None:
            held.append((pfn, o))
    ref = copy.deepcopy(fa)
    nxt = fa.contiguous_allocs(order, n)
    first = fa.alloc_contiguous(order, n)
    if nxt is None or nxt[1] < n:
        assert first is None and _state(fa) == _state(ref)
        return
    assert first == nxt[0]
    got = [ref.alloc(order) for _ in range(n)]
    assert got == [first + (i << order) for i in range(n)]
    assert _state(fa) == _state(ref)
    fa._check()


def _map(fast: bool, gib: int, *, fragment: float = 0.0, limit: str | None = None,
         va_off: int = 0, touch: int | None = None) -> tuple[object, ...]:
    """One MAP_DMA of THP memory; what it left behind."""
    m = Machine("x86-vtd", ram=f"{gib + 1}G")
    if fragment:
        m.mem.fragment(order=9, fraction=fragment)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(memlock_limit=limit, cap_ipc_lock=limit is None)
    p.mm.fast_faults = fast
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    size = (gib << 30) - va_off
    va = p.mmap(gib << 30, "thp") + va_off
    if touch is not None:  # a populated page in the middle: 4K pages in its stretch
        p.write(va + touch, b"x")
    m.mem.fail_nth.log = []
    try:
        p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, va, 1 << 32, size)))
        err = 0
    except OSError as e:
        err = e.errno or 0
    assert dev.group is not None and dev.group.domain is not None
    out = (err, dev.group.domain.leaf_runs(1 << 32, size), _state(m.mem.frames),
           list(m.mem.fail_nth.log), p.mm.locked_vm, m.mem.pins.pins)
    if not fast:
        assert p.mm.faulted_ahead == 0
    elif not fragment and not va_off:  # the fast path ran
        assert p.mm.faulted_ahead >= 128 << 9
    p.exit()
    assert m.mem.pins.pins == 0
    return out


@pytest.mark.parametrize("case", [
    {}, {"fragment": 0.3}, {"fragment": 1.0}, {"limit": "300M"}, {"va_off": 0x1000},
    {"touch": 0x1234567},
])
def test_map_dma_fast_faults_equal_batch_faults(case: dict[str, object]) -> None:
    fast = _map(True, 1, **case)  # type: ignore[arg-type]
    slow = _map(False, 1, **case)  # type: ignore[arg-type]
    assert fast == slow
    if case.get("limit"):
        assert fast[0] == errno.ENOMEM


def _ioas_map(fast: bool, *, fragment: float = 0.0, touch: int | None = None
              ) -> tuple[object, ...]:
    """IOMMU_IOAS_MAP of 1 GiB of THP into an IOAS with a VT-d domain; what it left."""
    from iommulab.iommufd import uapi as iu

    m = Machine("x86-vtd", ram="2G")
    if fragment:
        m.mem.fragment(order=9, fraction=fragment)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    p.mm.fast_faults = fast
    fd = p.open("/dev/iommu")
    out = bytearray(iu.IOAS_ALLOC.pack(12, 0, 0))
    p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, out)
    ioas = iu.IOAS_ALLOC.unpack(out)[2]
    cdev = p.open("/dev/vfio/devices/vfio0")
    p.ioctl(cdev, u.VFIO_DEVICE_BIND_IOMMUFD, bytearray(u.BIND_IOMMUFD.pack(16, 0, fd, 0)))
    p.ioctl(cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            bytearray(u.ATTACH_IOMMUFD_PT.pack(16, 0, ioas, 0)))
    va = p.mmap(1 << 30, "thp")
    if touch is not None:
        p.write(va + touch, b"x")
    p.ioctl(fd, iu.IOMMU_IOAS_MAP, bytearray(iu.IOAS_MAP.pack(40, 7, ioas, 0, va, 1 << 30,
                                                              1 << 32)))
    domain = dev.group.domain if dev.group is not None else None
    assert domain is not None
    res = (domain.leaf_runs(1 << 32, 1 << 30), _state(m.mem.frames), m.mem.pins.pins,
           p.mm.faulted_ahead > 0)
    p.exit()
    assert m.mem.pins.pins == 0
    return res


@pytest.mark.parametrize("case", [{}, {"fragment": 0.3}, {"touch": 0x2345678}])
def test_ioas_map_fast_faults_equal_gup_faults(case: dict[str, object]) -> None:
    fast = _ioas_map(True, **case)  # type: ignore[arg-type]
    slow = _ioas_map(False, **case)  # type: ignore[arg-type]
    assert fast[:3] == slow[:3]
    assert not slow[3]
    if not case:  # the fast path ran
        assert fast[3]
