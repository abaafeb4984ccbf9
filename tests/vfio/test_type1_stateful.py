"""MAP/UNMAP sequences against a plain model of the v2 rules; failures injected mid-map.

The plain model keeps the mappings as a dict and knows only what
``vfio_dma_do_map``/``vfio_dma_do_unmap`` promise userspace: overlapping maps
fail with EEXIST, an unmap that would split a mapping fails with EINVAL
(type1v2), and an unmap removes exactly the mappings inside its range and
returns their total size. After every step the IOMMU must translate every
mapped IOVA to the page the process has at the mapped vaddr, nothing else
may be mapped, and every mapped page must be pinned and charged once per
mapping.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab import Machine
from iommulab.vfio import uapi as u

from ..failnth.sweep import SWALLOWED
from .vm import Vm

UNIT = 1 << 16  # IOVAs, sizes and buffer offsets are multiples of 64K ...
SLOTS = 128  # ... in an 8M window, so 2M-aligned maps of the THP buffer get 2M IOPTEs
IOVA = 1 << 32
BUF = 8 << 20


class Type1V2Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vm = Vm(ram="256M")
        self.buf = self.vm.p.mmap(BUF, "thp")
        self.model: dict[int, tuple[int, int]] = {}  # iova -> (size, vaddr)

    def _overlaps(self, iova: int, size: int) -> bool:
        return any(i < iova + size and iova < i + n for i, (n, _) in self.model.items())

    @rule(slot=st.integers(0, SLOTS - 1), units=st.integers(1, 48),
          offset=st.integers(0, BUF // UNIT - 1))
    def map(self, slot: int, units: int, offset: int) -> None:
        iova, size = IOVA + slot * UNIT, units * UNIT
        vaddr = self.buf + min(offset * UNIT, BUF - size)
        try:
            self.vm.map(vaddr, iova, size)
        except OSError as err:
            assert err.errno == errno.EEXIST and self._overlaps(iova, size)
            return
        assert not self._overlaps(iova, size)
        self.model[iova] = (size, vaddr)

    @rule(slot=st.integers(0, SLOTS), units=st.integers(1, SLOTS))
    def unmap(self, slot: int, units: int) -> None:
        iova, size = IOVA + slot * UNIT, units * UNIT
        end = iova + size
        split = any(i < iova < i + n or i < end < i + n for i, (n, _) in self.model.items())
        try:
            done = self.vm.unmap(iova, size)
        except OSError as err:
            assert err.errno == errno.EINVAL and split
            return
        assert not split
        inside = [i for i, (n, _) in self.model.items() if iova <= i and i + n <= end]
        assert done == sum(self.model[i][0] for i in inside)
        for i in inside:
            del self.model[i]

    @precondition(lambda self: bool(self.model))
    @rule()
    def unmap_all(self) -> None:
        total = sum(n for n, _ in self.model.values())
        assert self.vm.unmap(0, 0, u.VFIO_DMA_UNMAP_FLAG_ALL) == total
        self.model.clear()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def device_writes_where_the_process_reads(self, data: st.DataObject) -> None:
        iova = data.draw(st.sampled_from(sorted(self.model)))
        size, vaddr = self.model[iova]
        at = data.draw(st.integers(0, size - 8))
        payload = data.draw(st.binary(min_size=8, max_size=8))
        self.vm.dev.dma_write(iova + at, payload)
        assert self.vm.p.read(vaddr + at, 8) == payload

    @invariant()
    def iommu_translates_exactly_the_model(self) -> None:
        assert self.vm.dev.group is not None and self.vm.dev.group.domain is not None
        domain = self.vm.dev.group.domain
        pfns = self.vm.p.mm.vmas[0].pfns()  # the THP buffer is the only VMA
        mapped = 0
        for iova, (size, vaddr) in self.model.items():
            runs = domain.leaf_runs(iova, size)
            assert sum(n for _, _, n in runs) == size
            for run_iova, pa, n in runs:
                first = (vaddr - self.buf + run_iova - iova) >> 12
                want = pfns[first:first + (n >> 12)]
                assert np.array_equal(want, np.arange(pa >> 12, (pa + n) >> 12))
            mapped += size
        assert sum(s * c for s, c in domain.leaf_histogram().items()) == mapped
        report = self.vm.report()
        assert report.mapped_bytes == mapped
        assert report.pinned_pages == report.locked_vm == mapped >> 12
        assert self.vm.m.mem.pins.pins == mapped >> 12

    def teardown(self) -> None:
        self.vm.close()


Type1V2Machine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_type1_v2_against_the_plain_model = Type1V2Machine.TestCase


@pytest.mark.parametrize(("platform", "backing", "injected"), [
    ("x86-vtd", "thp", errno.ENOMEM),
    ("x86-vtd", "anon", errno.ENOMEM),
    ("mock", "anon", errno.ENOENT),  # iommufd_should_fail() in mock_domain_map_pages
])
def test_fail_nth_through_map_leaves_nothing_behind(platform: str, backing: str,
                                                   injected: int) -> None:
    """Fail the 1st, 2nd, ... allocation of a MAP_DMA (the vfio_dma, the page fault, every
    page-table page) until the map succeeds untouched: each failure leaves the mappings, pins and
    locked_vm exactly as they were, and the map after it works. VT-d as in 7.0: 6.12
    leaves what a failed intel_iommu_map_pages wrote mapped (tests/drivers/vtd)."""
    kernel = "7.0" if platform == "x86-vtd" else "6.12"
    vm = Vm(machine=Machine(platform, ram="256M", kernel=kernel))
    base = IOVA if platform == "x86-vtd" else 1 << 24
    first = vm.p.mmap(1 << 20, backing)
    vm.map(first, base, 1 << 20)  # something already mapped must survive every failure

    def state() -> tuple[object, ...]:
        r = vm.report()
        return (r.dma_entries, r.mapped_bytes, r.iopte_bytes, r.pinned_pages, r.locked_vm,
                vm.m.mem.pins.pins, vm.p.mm.locked_vm)

    before = state()
    # 4K off a 2M boundary, in another 1G: new table pages at every level below the top
    target = base + (1 << 30) + 0x1000 if platform == "x86-vtd" else base + (4 << 20)
    fail = vm.m.mem.fail_nth
    seen: set[int | None] = set()
    buf = 0
    for nth in range(1, 200):
        if buf:  # a failed map leaves faulted in what it faulted: start each try afresh
            vm.p.munmap(buf, 4 << 20)
        buf = vm.p.mmap(4 << 20, backing)
        fail.arm(nth)
        try:
            vm.map(buf, target, 4 << 20)
        except OSError as err:
            assert fail.triggered, f"fail-nth {nth}: {err} without an injected failure"
            seen.add(err.errno)
            assert state() == before
            continue
        finally:
            fail.disarm()
        if not fail.triggered:
            break
        # a failure the kernel absorbs (an xarray node retried, a one-page vfio_batch):
        # mapped all the same
        assert fail.fired is not None and fail.fired.startswith(SWALLOWED), fail.fired
        assert vm.unmap(target, 4 << 20) == 4 << 20
    else:
        pytest.fail("MAP_DMA never succeeded")
    assert nth > 2 and injected in seen
    assert vm.unmap(0, 0, u.VFIO_DMA_UNMAP_FLAG_ALL) == 5 << 20
    vm.close()
