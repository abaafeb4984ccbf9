"""What MAP_DMA faults in when it fails part way: ``vfio_pin_map_dma`` pins a run
(``vfio_pin_pages_remote`` refills its 512-page ``vfio_batch`` only when the run reaches
the end of the batch, to see whether the next page continues it), maps it, and on a map
failure unpins the run and the batch and stops: the pages of the batches GUP fetched stay
faulted in, no page after them is touched."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from iommulab.mem.mm import pfn_runs

from .vm import Vm

IOVA = 1 << 32
MiB = 1 << 20
BATCH = 512


def _fail_nth_map(v: Vm, nth: int) -> None:
    """Make the ``nth`` ``iommu_map`` into the device's domain fail on its first page-table
    allocation (fail-nth)."""
    assert v.dev.group is not None and v.dev.group.domain is not None
    domain = v.dev.group.domain
    real = domain.map
    calls = 0

    def map_(iova: int, paddr: int, size: int, prot: int, gfp: int = 0) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            v.m.mem.fail_nth.arm(1)
        real(iova, paddr, size, prot, gfp)

    domain.map = map_  # type: ignore[method-assign]


def _present(v: Vm, buf: int) -> np.ndarray:
    vma = v.p.mm.find_vma(buf)
    assert vma is not None
    return vma.pfns() >= 0


@pytest.mark.parametrize("failing_run", [1, 2, 3, 4])
def test_a_failed_map_leaves_faulted_in_only_the_batches_gup_fetched(failing_run: int) -> None:
    """When the map of run ``failing_run`` fails, the pages faulted in are those of every
    batch up to the one holding the page after that run (GUP fetched it to see the run
    end), and one faulted in before; pins and locked_vm are back to nothing, nothing
    stays mapped. (Here run 1 is page 0, run 2 ends at the end of batch 0, where the
    tables run 1 took break the frames, run 3 at the page faulted in before, run 4 is
    that page.)"""
    v = Vm(ram="256M")
    buf = v.p.mmap(16 * MiB)  # 4096 pages: 8 batches
    prefault = 1024
    v.p.write(buf + prefault * 4096, b"x")
    _fail_nth_map(v, failing_run)
    with pytest.raises(OSError) as err:
        v.map(buf, IOVA, 16 * MiB)
    assert err.value.errno == errno.ENOMEM and v.m.mem.fail_nth.triggered
    present = _present(v, buf)
    vma = v.p.mm.find_vma(buf)
    assert vma is not None
    first_absent = int(np.argmin(present)) if not present.all() else len(present)
    runs = pfn_runs(vma.pfns()[:first_absent])
    run_end = sum(n for _, n in runs[:failing_run])  # the page after the failed run
    fetched = min(len(present), (run_end // BATCH + 1) * BATCH)
    want = np.zeros(len(present), dtype=bool)
    want[:fetched] = True
    want[prefault] = True
    assert fetched < len(present) and np.array_equal(present, want)
    assert v.m.mem.pins.pins == 0 and v.p.mm.locked_vm == 0
    assert v.report().mapped_bytes == 0 and not v.histogram()
    v.map(buf, IOVA, 16 * MiB)  # nothing left behind in the way
    v.close()


def test_a_failed_map_with_large_pages_disabled_faulted_in_only_the_runs_before() -> None:
    """disable_hugepages: a run is one page (6.12's one-page batch, 7.0's ``npage = 1``),
    returned before the next page is fetched; the third map failing leaves three pages
    faulted in."""
    v = Vm(ram="256M", disable_hugepages=True)
    buf = v.p.mmap(4 * MiB)
    _fail_nth_map(v, 3)
    with pytest.raises(OSError) as err:
        v.map(buf, IOVA + (2 * MiB) - 2 * 4096, 4 * MiB)  # the third page starts a new table
    assert err.value.errno == errno.ENOMEM and v.m.mem.fail_nth.triggered
    assert np.flatnonzero(_present(v, buf)).tolist() == [0, 1, 2]
    assert v.m.mem.pins.pins == 0 and v.p.mm.locked_vm == 0
    v.close()
