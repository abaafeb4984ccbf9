"""The page-table tree and address-space map, from a live domain and from a saved state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iommulab.inspect import (
    BadState,
    address_space_map,
    load_states,
    page_table_tree,
    render_address_space,
    save_domain,
    view_state,
)
from iommulab.iommu import ResvRegion, ResvType, alloc_paging_domain
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt
from iommulab.prot import Prot
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE


@pytest.fixture(params=[IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.INTEL_VTD_SS])
def domain_state(request: pytest.FixtureRequest) -> dict[str, Any]:
    d = alloc_paging_domain(request.param, IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48))
    d.map(0x4000_0000, 0x1_4000_0000, SZ_1G, RW)  # one 1G entry
    d.map(0x8000_0000, 0x2_0000_0000, 4 * SZ_2M, RW)  # four 2M entries
    d.map(0x9000_0000, 0x3_0000_0000, 3 * SZ_4K, RW)  # three 4K pages ...
    d.map(0x9000_3000, 0x3_1000_0000, SZ_4K, RW)  # ... and one more elsewhere in PA
    msi = ResvRegion(0x800_0000, 0x10_0000, Prot.WRITE | Prot.MMIO, ResvType.SW_MSI)
    state = save_domain(d, name="test", resv=[msi])
    live_rows = address_space_map(d)
    d.free()
    state["live_rows"] = live_rows
    return state


def test_map_rows_from_the_saved_state_equal_the_live_ones(
        domain_state: dict[str, Any]) -> None:
    live = domain_state.pop("live_rows")
    view = view_state(json.loads(json.dumps(domain_state)))
    rows = address_space_map(view)
    assert [r for r in rows if r.kind == "mapped"] == [
        r for r in live if r.kind == "mapped"]
    mapped = [(r.iova, r.length, r.iopte_size, r.count, r.pa, r.pa_runs) for r in rows
              if r.kind == "mapped"]
    assert mapped == [(0x4000_0000, SZ_1G, SZ_1G, 1, 0x1_4000_0000, 1),
                      (0x8000_0000, 4 * SZ_2M, SZ_2M, 4, 0x2_0000_0000, 1),
                      (0x9000_0000, 4 * SZ_4K, SZ_4K, 4, None, 2)]
    assert [r.kind for r in rows][:3] == ["hole", "reserved: SW_MSI", "hole"]
    text = render_address_space(view)
    assert "4 x 2M -> pa 0x200000000" in text and "4 x 4K -> 2 pa runs" in text
    assert "reserved: SW_MSI" in text and "hole" not in text


def test_tree_merges_runs_and_walks_one_address(domain_state: dict[str, Any]) -> None:
    domain_state.pop("live_rows")
    view = view_state(domain_state)
    tree = page_table_tree(view)
    assert "4 x 2M from pa 0x200000000" in tree
    assert "3 x 4K from pa 0x300000000" in tree  # the fourth page breaks the run
    walk = page_table_tree(view, iova=0x9000_3000)
    assert walk.count("\n") == 1 + len(view.pt.levels)  # header, level line, one per level
    assert "ADDR=0x310000000" in walk or "OA=0x310000000" in walk
    assert "stopped at 3 lines" in page_table_tree(view, max_lines=3)


def test_bad_state_files_name_the_file_and_line(tmp_path: Path,
                                                domain_state: dict[str, Any]) -> None:
    domain_state.pop("live_rows")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "states": [1,\n}')
    with pytest.raises(BadState, match=r"bad.json:3: not JSON"):
        load_states(bad)
    with pytest.raises(BadState, match="cannot read"):
        load_states(tmp_path / "missing.json")
    changes: list[tuple[dict[str, Any], str]] = [
        ({"version": 2}, "version 2"), ({"format": "NOPE"}, "'NOPE'"),
        ({"pgd": 12345}, "root table 0x3039"), ({"schema": "x"}, "not an iommulab.domain-state")]
    for change, message in changes:
        bad.write_text(json.dumps({"states": {"d": {**domain_state, **change}}}))
        with pytest.raises(BadState, match=message):
            load_states(bad)
    tables = list(domain_state["tables"])
    bad.write_text(json.dumps({**domain_state, "tables": tables[:1]}))  # the root only
    with pytest.raises(BadState, match="not among the saved tables"):
        page_table_tree(load_states(bad)["test"])
