"""``iommu_table_lpar_multi_ops``: a pSeries LPAR guest writes its TCEs through hcalls
(arch/powerpc/platforms/pseries/iommu.c).

- ``set``: one page with ``H_PUT_TCE`` (``tce_build_pSeriesLP``); more with
  ``H_PUT_TCE_INDIRECT`` from a per-CPU 4K list page, 512 entries a call
  (``tce_buildmulti_pSeriesLP``). On ``H_NOT_ENOUGH_RESOURCES`` the entries of the calls
  before the failing one are cleared (the failing call's own are not: the kernel counts
  them as never written) and the error is returned; other failures stop the calls and
  are only counted, the mapping going ahead half written (the kernel prints).
- ``clear``: ``H_STUFF_TCE`` of 0, 512 entries a call (``tce_freemulti_pSeriesLP``); the
  loop is a do-while, so clearing nothing still makes one call of 0 entries, which QEMU
  refuses with ``H_PARAMETER`` (counted as a failure, as the kernel prints one).
- ``get``: ``H_GET_TCE``.
"""

from __future__ import annotations

import numpy as np

from ...mem import PhysMem
from ...pgtable.tce import TCE_PCI_READ, TCE_PCI_WRITE, make_tces
from .hv import H_NOT_ENOUGH_RESOURCES, TCE_LIST_MAX, SpaprPhb
from .table import IommuTable

__all__ = ["LparTceOps"]


class LparTceOps:
    """The TCE ops of every table of one PHB; ``failures`` counts ignored hcall errors."""

    def __init__(self, phb: SpaprPhb, mem: PhysMem) -> None:
        self.phb = phb
        self.mem = mem
        self.tce_page: int | None = None  # the per-CPU list page (one CPU modelled)
        self.failures = 0

    def set(self, tbl: IommuTable, index: int, npages: int, pa: int, write: bool) -> int:
        """``tce_buildmulti_pSeriesLP``: 0, or ``H_NOT_ENOUGH_RESOURCES``."""
        perm = TCE_PCI_READ | (TCE_PCI_WRITE if write else 0)
        tces = make_tces(pa, npages, tbl.it_page_shift, perm)
        if npages == 1:
            return self._build_one(tbl, index, int(tces[0]))
        if self.tce_page is None:
            self.tce_page = self.mem.alloc_pages(0, site="tce_page") << 12
        shift = tbl.it_page_shift
        done, rc, limit = 0, 0, 0
        while not rc and done < npages:
            limit = min(npages - done, TCE_LIST_MAX)
            self.mem.write(self.tce_page, tces[done:done + limit].astype(">u8").tobytes())
            rc = self.phb.h_put_tce_indirect(tbl.it_index, (index + done) << shift,
                                             self.tce_page, limit)
            done += limit
        if rc == H_NOT_ENOUGH_RESOURCES:
            # npages_start - (npages + limit): what the calls before the failing one wrote
            self.clear(tbl, index, done - limit)
            return rc
        if rc:
            self.failures += 1
        return 0

    def _build_one(self, tbl: IommuTable, index: int, tce: int) -> int:
        """``tce_build_pSeriesLP`` of one page: on ``H_NOT_ENOUGH_RESOURCES`` the pages
        written before it (none) are cleared and the error returned."""
        rc = self.phb.h_put_tce(tbl.it_index, index << tbl.it_page_shift, tce)
        if rc == H_NOT_ENOUGH_RESOURCES:
            return rc
        if rc:
            self.failures += 1
        return 0

    def clear(self, tbl: IommuTable, index: int, npages: int) -> None:
        shift = tbl.it_page_shift
        if stuff_range(self.phb, tbl.it_index, index << shift, npages, shift):
            self.failures += 1

    def get(self, tbl: IommuTable, index: int) -> int:
        rc, tce = self.phb.h_get_tce(tbl.it_index, index << tbl.it_page_shift)
        if rc:
            self.failures += 1
        return tce

    def release(self) -> None:
        """Give back the list page."""
        if self.tce_page is not None:
            self.mem.free_pages(self.tce_page >> 12, 0)
            self.tce_page = None


def stuff_range(phb: SpaprPhb, liobn: int, dma_start: int, n: int, page_shift: int) -> int:
    """``tce_clearrange_multi_pSeriesLP`` / ``tce_freemulti_pSeriesLP``: ``n`` entries from
    bus address ``dma_start`` cleared with H_STUFF_TCE, 512 a call, stopping at the
    first failure; a do-while, so ``n = 0`` still makes one call (of 0 entries)."""
    done, rc = 0, 0
    while True:
        limit = min(n - done, TCE_LIST_MAX)
        rc = phb.h_stuff_tce(liobn, dma_start + (done << page_shift), 0, limit)
        done += limit
        if rc or done >= n:
            return rc


def setrange(phb: SpaprPhb, liobn: int, dma_base: int, page_shift: int, start: int,
             size: int) -> int:
    """``tce_setrange_multi_pSeriesLP``: RAM ``[start, start + size)`` mapped one to one
    at ``dma_base + address``, read-write, through H_PUT_TCE_INDIRECT calls of 512
    (counted as such; the entries are computed for the whole range at once)."""
    tce_size = 1 << page_shift
    first = start & ~(tce_size - 1)
    num = (size + (start & (tce_size - 1))) | (tce_size - 1)
    num >>= page_shift
    tces = make_tces(first, num, page_shift, TCE_PCI_READ | TCE_PCI_WRITE)
    return phb.put_tce_indirect_run(liobn, dma_base + first, np.asarray(tces))
