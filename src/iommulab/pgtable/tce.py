"""PowerPC TCE tables: one 64-bit big-endian entry per IO page, as a PHB reads them.

A TCE (translation control entry) holds the real page number of its IO page in the bits
above the table's page shift and the access rights in bits 0 and 1
(``arch/powerpc/include/asm/tce.h``: TCE_PCI_READ 0x1, TCE_PCI_WRITE 0x2). pSeries guests
build them in ``tce_build_pSeriesLP`` as ``proto_tce | rpn << tceshift`` with
``rpn = __pa(uaddr) >> tceshift``: nothing here assumes the IO page is 4K.

:class:`TceTable` is the hypervisor's table of one window (QEMU ``SpaprTceTable``): a
window can have billions of entries, so the table is kept in chunks of
:data:`CHUNK_ENTRIES` entries allocated on first write (lab: QEMU allocates the whole
table; the entries and their byte order are the same). Bulk writes and clears are
vectorised per chunk.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["CHUNK_ENTRIES", "TCE_ENTRY_SIZE", "TCE_PCI_READ", "TCE_PCI_WRITE", "TceTable",
           "make_tce", "make_tces", "tce_rpn_address"]

TCE_ENTRY_SIZE = 8
TCE_PCI_READ = 0x1
TCE_PCI_WRITE = 0x2
TCE_RW = TCE_PCI_READ | TCE_PCI_WRITE
CHUNK_SHIFT = 12
CHUNK_ENTRIES = 1 << CHUNK_SHIFT  # 32 KiB of entries per chunk
_BE64 = np.dtype(">u8")


def make_tce(pa: int, page_shift: int, perm: int) -> int:
    """``proto_tce | rpn << tceshift``: the entry mapping the IO page holding ``pa``."""
    return (pa >> page_shift) << page_shift | (perm & TCE_RW)


def make_tces(pa: int, n: int, page_shift: int, perm: int) -> npt.NDArray[np.uint64]:
    """``n`` entries for consecutive IO pages from the one holding ``pa``."""
    first = (pa >> page_shift) << page_shift
    step = np.uint64(1 << page_shift)
    return np.arange(n, dtype=np.uint64) * step + np.uint64(first | (perm & TCE_RW))


def tce_rpn_address(tce: int, page_shift: int) -> int:
    """The address of the IO page an entry maps (``iommu_tce_direction`` ignores the
    permission bits the same way)."""
    return (tce >> page_shift) << page_shift


class TceTable:
    """The entries of one DMA window: ``nb_table`` entries of ``1 << page_shift`` bytes
    each, the first one at bus address ``bus_offset``."""

    def __init__(self, bus_offset: int, page_shift: int, nb_table: int) -> None:
        self.bus_offset = bus_offset
        self.page_shift = page_shift
        self.nb_table = nb_table
        self._chunks: dict[int, npt.NDArray[np.uint64]] = {}

    def __repr__(self) -> str:
        return (f"<TceTable bus {self.bus_offset:#x} {self.nb_table} x "
                f"{1 << self.page_shift:#x}>")

    @property
    def window_size(self) -> int:
        return self.nb_table << self.page_shift

    @property
    def allocated_bytes(self) -> int:
        """Memory the chunks hold (lab; a flat table would take ``nb_table * 8``)."""
        return len(self._chunks) * CHUNK_ENTRIES * TCE_ENTRY_SIZE

    def get(self, index: int) -> int:
        chunk = self._chunks.get(index >> CHUNK_SHIFT)
        return 0 if chunk is None else int(chunk[index & (CHUNK_ENTRIES - 1)])

    def put(self, index: int, tces: npt.NDArray[np.uint64]) -> None:
        """Write ``tces`` at ``index`` onwards (the caller checked the range)."""
        done, n = 0, len(tces)
        while done < n:
            i = index + done
            c, off = i >> CHUNK_SHIFT, i & (CHUNK_ENTRIES - 1)
            k = min(n - done, CHUNK_ENTRIES - off)
            chunk = self._chunks.get(c)
            part = tces[done:done + k]
            if chunk is None:
                if not part.any():
                    done += k
                    continue
                chunk = self._chunks[c] = np.zeros(CHUNK_ENTRIES, dtype=_BE64)
            chunk[off:off + k] = part
            if not part.any() and off == 0 and k == CHUNK_ENTRIES:
                del self._chunks[c]
            done += k

    def stuff(self, index: int, n: int, value: int) -> None:
        """Set ``n`` entries from ``index`` to ``value`` (H_STUFF_TCE)."""
        done = 0
        while done < n:
            i = index + done
            c, off = i >> CHUNK_SHIFT, i & (CHUNK_ENTRIES - 1)
            k = min(n - done, CHUNK_ENTRIES - off)
            chunk = self._chunks.get(c)
            if chunk is None and value:
                chunk = self._chunks[c] = np.zeros(CHUNK_ENTRIES, dtype=_BE64)
            if chunk is not None:
                chunk[off:off + k] = value
                if not value and not chunk.any():
                    del self._chunks[c]
            done += k

    def used(self) -> int:
        """Entries with any bit set."""
        return sum(int(np.count_nonzero(c)) for c in self._chunks.values())

    def raw(self, index: int, n: int) -> bytes:
        """The entries' bytes as the PHB reads them from table memory (big-endian)."""
        out = np.zeros(n, dtype=_BE64)
        done = 0
        while done < n:
            i = index + done
            off = i & (CHUNK_ENTRIES - 1)
            k = min(n - done, CHUNK_ENTRIES - off)
            chunk = self._chunks.get(i >> CHUNK_SHIFT)
            if chunk is not None:
                out[done:done + k] = chunk[off:off + k]
            done += k
        return out.tobytes()

    def clear(self) -> None:
        self._chunks.clear()

    def _check(self) -> None:
        for c, chunk in self._chunks.items():
            assert 0 <= c << CHUNK_SHIFT < self.nb_table, f"chunk {c} outside the table"
            assert chunk.dtype == _BE64 and len(chunk) == CHUNK_ENTRIES
