"""SmmuV3Hw.translate's inlined IOTLB hit and the domains' single-page fast path
against the layered paths, on two identical SMMUv3 platforms.

One platform translates with ``translate`` (fast hit path) and maps with the
single-page fast path on; the other translates with ``translate_run`` (the
reference) and has the fast path off. After every step the addresses or
fault reasons, the hardware and IOTLB counters, the IOTLB entries, the
commands consumed and the page tables must be the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.drivers.smmuv3 import IotlbConfig
from iommulab.errors import DmaFault, KernelError

from .platform import Platform, make_platform

IOVA = 0x10_0000
SID = 0x10


def _setup(iotlb: IotlbConfig, fast: bool) -> tuple[Platform, Any]:
    p = make_platform(ram="256M", iotlb=iotlb)
    master, _ = p.device(SID)
    d = p.domain(master)
    if not fast:
        d.disable_single_fast()
    else:
        assert d.enable_single_fast()
    return p, d


def _translate(p: Platform, fast: bool, iova: int, access: int) -> Any:
    try:
        if fast:
            return p.hw.translate(SID, iova, access)
        return p.hw.translate_run(SID, iova, bool(access & Prot.WRITE),
                                  bool(access & Prot.PRIV))[0]
    except DmaFault as f:
        return ("fault", f.reason)


def _step(p: Platform, d: Any, fast: bool, op: tuple[Any, ...]) -> Any:
    kind, page, pa_page, prot, access = op
    iova = IOVA + page * 0x1000
    try:
        if kind == "map":
            return d.map(iova, 0x100_0000 + pa_page * 0x1000, 0x1000, prot)
        if kind == "unmap":
            return d.unmap(iova, 0x1000)
        if kind == "inv_all":
            return d.flush_iotlb_all()
        return _translate(p, fast, iova + 0x123, access)
    except KernelError as err:
        return (err.errno, str(err))


def _state(p: Platform, d: Any) -> Any:
    hw = p.hw
    entries = sorted(dataclasses.astuple(e) for e in hw.iotlb.entries())
    return (dataclasses.asdict(hw.stats), dataclasses.asdict(hw.iotlb.stats), entries,
            list(hw.recent_commands), d.pgtbl.iter_entries(), dataclasses.asdict(d.tlb_stats),
            dataclasses.asdict(d.pgtbl.stats))


OPS = st.tuples(
    st.sampled_from(["map", "unmap", "inv_all", "tr", "tr", "tr", "tr"]),
    st.integers(0, 6), st.integers(0, 6),
    st.sampled_from([Prot.READ | Prot.WRITE, Prot.READ, Prot.WRITE, int(Prot.READ)]),
    st.sampled_from([int(Prot.READ), int(Prot.WRITE), Prot.READ, Prot.WRITE | Prot.PRIV,
                     int(Prot.READ | Prot.PRIV)]))


@pytest.mark.parametrize("iotlb", [IotlbConfig.qemu(), IotlbConfig.tiny(),
                                   IotlbConfig("setassoc", 8, 2, "rr")])
@settings(max_examples=40, deadline=None)
@given(ops=st.lists(OPS, max_size=40))
def test_fast_matches_layered(iotlb: IotlbConfig, ops: list[tuple[Any, ...]]) -> None:
    a, da = _setup(iotlb, True)
    b, db = _setup(iotlb, False)
    try:
        for op in ops:
            assert _step(a, da, True, op) == _step(b, db, False, op), op
            assert _state(a, da) == _state(b, db), op
    finally:
        a.close()
        b.close()


def test_fast_translate_hit_and_decline(plat: Platform) -> None:
    master, _ = plat.device(SID)
    d = plat.domain(master)
    pa = plat.buffer(0x1000)
    d.map(IOVA, pa, 0x1000, Prot.READ)
    hw = plat.hw
    assert hw.fast_translate(SID, IOVA) is None  # not cached yet
    assert hw.translate(SID, IOVA + 5) == pa + 5  # walks, fills the IOTLB
    entry = hw.fast_translate(SID, IOVA)
    assert entry is not None and entry.pa == pa
    assert hw.fast_translate(SID, IOVA, write=True) is None  # a read-only leaf
    before = dataclasses.asdict(hw.stats)
    assert hw.translate(SID, IOVA + 7) == pa + 7
    assert hw.stats.translations == before["translations"] + 1
    assert hw.stats.walks == before["walks"]
    with pytest.raises(DmaFault):
        hw.translate(SID, IOVA, Prot.WRITE)
    assert hw.fast_translate(0x11, IOVA) is None  # no configuration cached
