"""A plain reference model of an ARM LPAE paging domain (Linux 6.13+ semantics).

The table is a tree of dicts: a node maps the aligned iova of each entry to
a leaf ``(size, pa)`` or a child node, and nodes stay when their leaves go,
as io-pgtable-arm's tables do. Page sizes are chosen greedily (the largest
size aligned for both addresses that fits), which is what ``iommu_pgsize``
amounts to; a run of equal leaves is one ``map_pages`` call, cut at
table-page boundaries. Written per entry with no arrays, physical memory or
shared code with the model.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Union

Leaf = tuple[int, int]  # (size, pa)
Node = dict[int, Union[Leaf, "Node"]]


class ArmLpaeReference:
    def __init__(self, level_sizes: tuple[int, ...], bitmap: int, per_page: int) -> None:
        self.level_sizes = level_sizes  # block size per level, top first
        self.bitmap = bitmap
        self.per_page = per_page
        self.root: Node = {}
        self._sizes_desc = sorted((s for s in level_sizes if s & bitmap), reverse=True)

    # -- views --------------------------------------------------------------------------
    def _walk(self, node: Node, depth: int) -> Iterator[tuple[int, int, Leaf | None]]:
        for base, entry in sorted(node.items()):
            if isinstance(entry, dict):
                yield base, self.level_sizes[depth], None
                yield from self._walk(entry, depth + 1)
            else:
                yield base, self.level_sizes[depth], entry

    @property
    def leaves(self) -> dict[int, Leaf]:
        return {base: entry for base, _, entry in self._walk(self.root, 0) if entry}

    @property
    def tables(self) -> set[tuple[int, int]]:
        return {(size, base) for base, size, entry in self._walk(self.root, 0) if not entry}

    def leaves_in(self, va: int, length: int) -> list[tuple[int, int]]:
        """(iova, size) of the leaves overlapping ``[va, va + length)``."""
        out: list[tuple[int, int]] = []

        def visit(node: Node, depth: int, lo: int, hi: int) -> None:
            size = self.level_sizes[depth]
            for base in range(lo - lo % size, hi, size):
                entry = node.get(base)
                if isinstance(entry, dict):
                    visit(entry, depth + 1, max(lo, base), min(hi, base + size))
                elif entry is not None:
                    out.append((base, size))

        visit(self.root, 0, va, va + length)
        return out

    def iova_to_phys(self, iova: int) -> int:
        node = self.root
        for size in self.level_sizes:
            entry = node.get(iova - iova % size)
            if entry is None:
                return 0
            if not isinstance(entry, dict):
                return entry[1] + iova % size
            node = entry
        return 0

    # -- map ------------------------------------------------------------------------------
    def _greedy(self, iova: int, pa: int, size: int) -> Iterator[tuple[int, int, int]]:
        while size:
            s = next(s for s in self._sizes_desc if not (iova | pa) % s and s <= size)
            yield iova, pa, s
            iova, pa, size = iova + s, pa + s, size - s

    def _batches(self, iova: int, pa: int, size: int) -> list[tuple[int, int, int, int]]:
        out: list[tuple[int, int, int, int]] = []
        for v, p, s in self._greedy(iova, pa, size):
            if out:
                v0, p0, s0, n = out[-1]
                same_page = v0 // (s0 * self.per_page) == v // (s * self.per_page)
                if s0 == s and v0 + n * s == v and same_page:
                    out[-1] = (v0, p0, s0, n + 1)
                    continue
            out.append((v, p, s, 1))
        return out

    def map(self, iova: int, pa: int, size: int) -> int:
        """Returns 0 or the errno the domain's ``map`` must raise."""
        min_size = self.bitmap & -self.bitmap
        if (iova | pa | size) % min_size:
            return errno.EINVAL
        mapped = 0
        for v0, p0, s, n in self._batches(iova, pa, size):
            err = self._map_batch(v0, p0, s, n)
            if err:
                self.unmap(iova, mapped)
                return err
            mapped += n * s
        return 0

    def _map_batch(self, v0: int, p0: int, s: int, n: int) -> int:
        node = self.root
        for big in self.level_sizes:
            if big == s:
                break
            entry = node.setdefault(v0 - v0 % big, {})  # a missing table is allocated
            if not isinstance(entry, dict):
                return errno.EEXIST
            node = entry
        for i in range(n):
            old = node.get(v0 + i * s)
            if old is not None and not isinstance(old, dict):
                return errno.EEXIST
            if old is not None:
                del node[v0 + i * s]  # a block replaces the table and all under it
        for i in range(n):
            node[v0 + i * s] = (s, p0 + i * s)
        return 0

    # -- unmap ----------------------------------------------------------------------------
    def unmap(self, iova: int, size: int) -> int:
        min_size = self.bitmap & -self.bitmap
        if (iova | size) % min_size:
            return 0
        done = 0
        while done < size:
            s = next(s for s in self._sizes_desc if not iova % s and s <= size - done)
            if not self._unmap_one(iova, s):
                break
            iova += s
            done += s
        return done

    def _unmap_one(self, iova: int, s: int) -> bool:
        node = self.root
        for big in self.level_sizes:
            if big == s:
                break
            entry = node.get(iova - iova % big)
            if not isinstance(entry, dict):
                return False  # empty on the way, or part of a larger leaf: refused
            node = entry
        return node.pop(iova, None) is not None  # a leaf, or a table and all under it
