"""A plain reference model of an ARM LPAE paging domain (Linux 6.13+ semantics).

State is two dicts: leaves ``{iova: (size, pa)}`` and the set of table
entries ``{(block_size, iova)}`` (tables stay when their leaves go, as in
io-pgtable-arm). Page sizes are chosen greedily (the largest size aligned for
both addresses that fits), which is what ``iommu_pgsize`` amounts to; a run
of equal leaves is one ``map_pages`` call, cut at table-page boundaries.
Written per leaf, with no arrays, so it shares no code with the model.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field


@dataclass
class ArmLpaeReference:
    level_sizes: tuple[int, ...]  # block size per level, top first (last = granule)
    bitmap: int
    per_page: int  # entries per table page
    leaves: dict[int, tuple[int, int]] = field(default_factory=dict)
    tables: set[tuple[int, int]] = field(default_factory=set)

    def _sizes_desc(self) -> list[int]:
        return sorted((s for s in self.level_sizes if s & self.bitmap), reverse=True)

    def _leaf_at(self, size: int, base: int) -> bool:
        leaf = self.leaves.get(base)
        return leaf is not None and leaf[0] == size

    def _drop_under(self, size: int, base: int) -> None:
        """Free the table in entry (size, base): everything below it goes."""
        end = base + size
        for iova in [i for i, (s, _) in self.leaves.items() if base <= i < end and s < size]:
            del self.leaves[iova]
        self.tables = {(s, i) for s, i in self.tables
                       if not (base <= i < end and s < size)}
        self.tables.discard((size, base))

    def _greedy(self, iova: int, pa: int, size: int) -> list[tuple[int, int, int]]:
        plan = []
        while size:
            s = next(s for s in self._sizes_desc() if not (iova | pa) % s and s <= size)
            plan.append((iova, pa, s))
            iova, pa, size = iova + s, pa + s, size - s
        return plan

    def _batches(self, plan: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
        out: list[tuple[int, int, int, int]] = []
        for iova, pa, s in plan:
            if out:
                v0, p0, s0, n = out[-1]
                same_page = (v0 // (s0 * self.per_page)) == (iova // (s * self.per_page))
                if s0 == s and v0 + n * s == iova and same_page:
                    out[-1] = (v0, p0, s0, n + 1)
                    continue
            out.append((iova, pa, s, 1))
        return out

    def map(self, iova: int, pa: int, size: int) -> int:
        """Returns 0 or the errno the domain's ``map`` must raise."""
        min_size = self.bitmap & -self.bitmap
        if (iova | pa | size) % min_size:
            return errno.EINVAL
        mapped = 0
        for v0, p0, s, n in self._batches(self._greedy(iova, pa, size)):
            err = self._map_batch(v0, p0, s, n)
            if err:
                self.unmap(iova, mapped)
                return err
            mapped += n * s
        return 0

    def _map_batch(self, v0: int, p0: int, s: int, n: int) -> int:
        for big in self.level_sizes:
            if big == s:
                break
            base = v0 - v0 % big
            if self._leaf_at(big, base):
                return errno.EEXIST
            self.tables.add((big, base))
        for i in range(n):
            b = v0 + i * s
            if self._leaf_at(s, b):
                return errno.EEXIST
            if (s, b) in self.tables:
                self._drop_under(s, b)
        for i in range(n):
            self.leaves[v0 + i * s] = (s, p0 + i * s)
        return 0

    def unmap(self, iova: int, size: int) -> int:
        min_size = self.bitmap & -self.bitmap
        if (iova | size) % min_size:
            return 0
        done = 0
        while done < size:
            s = next(s for s in self._sizes_desc() if not iova % s and s <= size - done)
            if not self._unmap_one(iova, s):
                break
            iova += s
            done += s
        return done

    def _unmap_one(self, iova: int, s: int) -> bool:
        for big in self.level_sizes:
            if big == s:
                break
            base = iova - iova % big
            if self._leaf_at(big, base):
                return False  # part of a larger leaf: refused
            if (big, base) not in self.tables:
                return False  # empty entry on the way
        if self._leaf_at(s, iova):
            del self.leaves[iova]
            return True
        if (s, iova) in self.tables:
            self._drop_under(s, iova)
            return True
        return False

    def iova_to_phys(self, iova: int) -> int:
        for s in self.level_sizes:
            base = iova - iova % s
            if self._leaf_at(s, base):
                return self.leaves[base][1] + iova - base
        return 0
