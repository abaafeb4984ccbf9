"""``xa_nodes_needed``: the ``xa_node`` allocations fail-nth charges to an xarray store,
against a plain set-of-nodes model of the tree (``lib/xarray.c``: 64 slots per node,
XA_CHUNK_SHIFT 6; a lone entry at index 0 lives in the head), over the whole
``unsigned long`` index range."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from iommulab.mem.fault import xa_nodes_needed

U64_MAX = (1 << 64) - 1


def _nodes(indexes: set[int]) -> int:
    """Nodes of a tree holding ``indexes``: at each level up to the height the largest
    index needs, one per 64-slot chunk in use."""
    if not indexes or indexes == {0}:
        return 0
    top = max(indexes)
    height = 1
    while top >> (6 * height):
        height += 1
    return len({(level, i >> (6 * level)) for i in indexes
                for level in range(1, height + 1)})


def test_heights_over_the_index_range() -> None:
    empty = np.array([], dtype=np.uint64)
    assert xa_nodes_needed(empty, 0, 0) == 0  # in the head
    assert xa_nodes_needed(empty, 1, 1) == 1
    assert xa_nodes_needed(empty, 64, 64) == 2
    assert xa_nodes_needed(empty, U64_MAX, U64_MAX) == 11  # ceil(64 / 6) levels
    assert xa_nodes_needed(np.array([U64_MAX], dtype=np.uint64), 0x10, 0x10) == 10
    assert xa_nodes_needed(np.array([0x10], dtype=np.uint64), 0x10, 0x10) == 0


@given(st.sets(st.integers(0, U64_MAX), max_size=12), st.integers(0, U64_MAX))
def test_a_store_anywhere_in_64_bits(present: set[int], index: int) -> None:
    want = _nodes(present | {index}) - _nodes(present)
    arr = np.array(sorted(present), dtype=np.uint64)
    assert xa_nodes_needed(arr, index, index) == want
    if all(i < 1 << 63 for i in present | {index}):  # the int64 form agrees below 2^63
        assert xa_nodes_needed(arr.astype(np.int64), index, index) == want
