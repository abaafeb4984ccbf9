"""Lab: a domain's page table as a readable tree and as an address-space map.

Both views read the table entries the way the IOMMU walks them (the format's
own descriptor decoding, from the root down), from a live domain or from a
saved state. A saved state is a JSON document (``iommulab.domain-state``,
version 1) holding the format, the filled-in config, every table page as
base64 of its little-endian 64-bit entries, keyed by the value a table
entry's address bits give, and the reserved regions of the domain's group.
``iommulab run SCENARIO --save-state FILE`` writes them; ``iommulab inspect
FILE`` reads them.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .iommu import IommuDomain, ResvRegion
from .mem import FailNth
from .pgtable.arm_lpae import LPAE_FORMATS, arm_lpae_alloc
from .pgtable.cfg import IoPgtableCfg, IoPgtableFmt, Quirk
from .pgtable.format import PtFormat, U64Array
from .pgtable.vtd_ss import vtd_ss_alloc
from .report import format_size
from .sizes import PAGE_SIZE

__all__ = [
    "STATE_SCHEMA",
    "STATE_VERSION",
    "BadState",
    "MapRow",
    "TableView",
    "address_space_map",
    "load_states",
    "page_table_tree",
    "render_address_space",
    "save_domain",
    "view_state",
]

STATE_SCHEMA = "iommulab.domain-state"
STATE_VERSION = 1


class BadState(ValueError):
    """A saved state that cannot be read; the message names the file and what is wrong."""


@dataclass
class TableView:
    """The tables of one page table, as the IOMMU reads them."""

    name: str
    fmt: IoPgtableFmt
    pt: PtFormat
    pgd: int  # key of the root table
    tables: dict[int, U64Array]  # key (table entry & table_key_mask) -> entries
    reserved: list[dict[str, Any]]

    @classmethod
    def of(cls, domain: IommuDomain, *, name: str = "",
           resv: Sequence[ResvRegion] = ()) -> TableView:
        pgtbl = domain.pgtbl
        if pgtbl is None:
            raise InvalidArgument(f"{domain!r}: not a paging domain with an io-pgtable")
        pt = pgtbl.format
        key = pt.make_table(pgtbl.pgd_pa) & pt.table_key_mask
        return cls(name or repr(domain), pgtbl.fmt, pt, key, dict(pgtbl._tables),
                   [_resv_json(r) for r in resv])

    def deref(self, pte: int) -> U64Array:
        key = pte & self.pt.table_key_mask
        table = self.tables.get(key)
        if table is None:
            raise BadState(f"{self.name}: a table entry points to {key:#x}, which is not "
                           "among the saved tables")
        return table

    def leaves(self) -> tuple[U64Array, U64Array, U64Array]:
        """Every leaf as arrays ``(iova, size, pa)`` sorted by IOVA; one numpy step per
        table, not per entry."""
        pt = self.pt
        parts: list[tuple[U64Array, U64Array, U64Array]] = []
        stack = [(self.tables[self.pgd], 0, 0)]
        while stack:
            table, depth, base = stack.pop()
            level = pt.levels[depth]
            entries = table[:level.entries]
            live = np.flatnonzero(entries)
            if not len(live):
                continue
            ptes = entries[live]
            leaf = pt.leaf_mask(ptes, depth)
            if leaf.any():
                iovas = np.uint64(base) + live[leaf].astype(np.uint64) * np.uint64(
                    level.block_size)
                parts.append((iovas, np.full(len(iovas), level.block_size, np.uint64),
                              pt.leaf_oas(ptes[leaf])))
            for i in live[pt.table_mask(ptes, depth)].tolist():
                stack.append((self.deref(int(entries[i])), depth + 1, base | i << level.shift))
        if not parts:
            empty = np.zeros(0, np.uint64)
            return empty, empty, empty
        iova, size, pa = (np.concatenate(a) for a in zip(*parts, strict=True))
        order = np.argsort(iova, kind="stable")
        return iova[order], size[order], pa[order]


def _resv_json(r: ResvRegion) -> dict[str, Any]:
    return {"start": r.start, "length": r.length, "type": r.type.name}


def save_domain(domain: IommuDomain, *, name: str = "",
                resv: Sequence[ResvRegion] = ()) -> dict[str, Any]:
    """The JSON-ready saved state of ``domain``'s page table (copies every table page)."""
    view = TableView.of(domain, name=name, resv=resv)
    pgtbl = domain.pgtbl
    assert pgtbl is not None
    cfg = pgtbl.cfg
    return {
        "schema": STATE_SCHEMA, "version": STATE_VERSION, "name": view.name,
        "format": view.fmt.name,
        "cfg": {"pgsize_bitmap": cfg.pgsize_bitmap, "ias": cfg.ias, "oas": cfg.oas,
                "quirks": int(cfg.quirks),
                "set_pte_snp": bool(getattr(view.pt, "set_pte_snp", False)),
                "levels": len(view.pt.levels)},
        "pgd": view.pgd,
        "tables": [{"key": key, "data": base64.b64encode(
            table.astype("<u8").tobytes()).decode("ascii")}
            for key, table in sorted(view.tables.items())],
        "reserved": view.reserved,
    }


def _format_of(fmt: IoPgtableFmt, cfg: dict[str, Any]) -> PtFormat:
    io_cfg = IoPgtableCfg(int(cfg["pgsize_bitmap"]), int(cfg["ias"]), int(cfg["oas"]),
                          Quirk(int(cfg.get("quirks", 0))))
    if fmt == IoPgtableFmt.INTEL_VTD_SS:
        levels = cfg.get("levels")  # VT-d depth comes from SAGAW, not the width
        return vtd_ss_alloc(io_cfg, set_pte_snp=bool(cfg.get("set_pte_snp")),
                            levels=None if levels is None else int(levels))[0]
    if fmt in LPAE_FORMATS:
        return arm_lpae_alloc(fmt, io_cfg, PAGE_SIZE, FailNth())[0]
    raise InvalidArgument(f"format {fmt.name} is not modelled")


def view_state(state: dict[str, Any], where: str = "state") -> TableView:
    """A :class:`TableView` of a saved state (as :func:`save_domain` made it)."""
    try:
        if state.get("schema") != STATE_SCHEMA:
            raise BadState(f"{where}: not an {STATE_SCHEMA} document")
        if state.get("version") != STATE_VERSION:
            raise BadState(f"{where}: version {state.get('version')!r}; this iommulab reads "
                           f"version {STATE_VERSION}")
        fmt = IoPgtableFmt[state["format"]]
        pt = _format_of(fmt, state["cfg"])
        tables: dict[int, U64Array] = {}
        for n, t in enumerate(state["tables"]):
            raw = base64.b64decode(t["data"], validate=True)
            if not raw or len(raw) % 8:
                raise BadState(f"{where}: table {n} holds {len(raw)} bytes, not 64-bit "
                               "entries")
            tables[int(t["key"])] = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
        pgd = int(state["pgd"])
        if pgd not in tables:
            raise BadState(f"{where}: the root table {pgd:#x} is not among the tables")
        return TableView(str(state.get("name", where)), fmt, pt, pgd, tables,
                         list(state.get("reserved", [])))
    except KeyError as e:
        raise BadState(f"{where}: missing or unknown {e}") from None
    except (TypeError, ValueError, InvalidArgument) as e:
        if isinstance(e, BadState):
            raise
        raise BadState(f"{where}: {e}") from None


def load_states(path: str | Path) -> dict[str, TableView]:
    """The domain states in ``path``: one domain-state document or a scenario's
    ``{"states": {name: domain-state}}``."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadState(f"{path}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadState(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    if not isinstance(doc, dict):
        raise BadState(f"{path}:1: expected a JSON object")
    if "states" in doc:
        states = doc["states"]
        if not isinstance(states, dict) or not states:
            raise BadState(f"{path}: 'states' holds no domain state")
        return {name: view_state(s, f"{path}: state {name!r}") for name, s in states.items()}
    view = view_state(doc, str(path))
    return {view.name: view}


@dataclass(frozen=True)
class MapRow:
    """One line of the address-space map: leaves of one size, IOVA-contiguous."""

    iova: int
    length: int
    kind: str  # "mapped", "reserved: <TYPE>" or "hole"
    iopte_size: int = 0
    count: int = 0
    pa: int | None = None  # first PA when the run is also physically contiguous
    pa_runs: int = 0  # physically contiguous pieces of the run


def _source(obj: TableView | IommuDomain) -> TableView:
    return obj if isinstance(obj, TableView) else TableView.of(obj)


def address_space_map(obj: TableView | IommuDomain) -> list[MapRow]:
    """Mapped runs (one row per IOPTE size and IOVA-contiguous stretch), reserved regions
    and the holes between, in IOVA order."""
    view = _source(obj)
    iova, size, pa = view.leaves()
    rows: list[MapRow] = []
    if len(iova):
        brk = np.flatnonzero((iova[1:] != iova[:-1] + size[:-1]) | (size[1:] != size[:-1])) + 1
        pa_brk = np.concatenate(([False], pa[1:] != pa[:-1] + size[:-1]))
        pa_breaks = np.cumsum(pa_brk)
        bounds = np.concatenate(([0], brk, [len(iova)])).tolist()
        for a, b in itertools.pairwise(bounds):
            pieces = int(pa_breaks[b - 1] - pa_breaks[a]) + 1
            rows.append(MapRow(int(iova[a]), int(iova[b - 1] + size[b - 1] - iova[a]), "mapped",
                               int(size[a]), b - a, int(pa[a]) if pieces == 1 else None,
                               pieces))
    rows.extend(MapRow(int(r["start"]), int(r["length"]), f"reserved: {r['type']}")
                for r in view.reserved)
    rows.sort(key=lambda r: (r.iova, r.kind != "mapped"))
    out: list[MapRow] = []
    end = 0
    for r in rows:
        if r.iova > end:
            out.append(MapRow(end, r.iova - end, "hole"))
        out.append(r)
        end = max(end, r.iova + r.length)
    return out


def render_address_space(obj: TableView | IommuDomain, *, holes: bool = False) -> str:
    """:func:`address_space_map` as text, one row per line."""
    lines = []
    for r in address_space_map(obj):
        if r.kind == "hole" and not holes:
            continue
        span = f"[{r.iova:#014x}, {r.iova + r.length:#014x})"
        if r.kind == "mapped":
            pa = f" -> pa {r.pa:#x}" if r.pa is not None else f" -> {r.pa_runs} pa runs"
            lines.append(f"{span} {format_size(r.length):>6}  {r.count} x "
                         f"{format_size(r.iopte_size)}{pa}")
        else:
            lines.append(f"{span} {format_size(r.length):>6}  {r.kind}")
    return "\n".join(lines) or "(nothing mapped)"


def page_table_tree(obj: TableView | IommuDomain, *, max_lines: int = 200,
                    iova: int | None = None) -> str:
    """The tables from the root as an indented tree; runs of leaves of the same kind whose
    addresses continue are one line. ``iova`` shows only the path to that address."""
    view = _source(obj)
    pt = view.pt
    lines: list[str] = [f"{view.name}: {view.fmt.name}, {len(view.tables)} table pages, "
                        f"root {view.pgd:#x}"]
    truncated = False

    def emit(text: str) -> bool:
        nonlocal truncated
        if len(lines) >= max_lines:
            truncated = True
            return False
        lines.append(text)
        return True

    def visit(table: U64Array, depth: int, base: int, indent: str) -> bool:
        level = pt.levels[depth]
        entries = table[:level.entries]
        idx = np.flatnonzero(entries).tolist()
        if iova is not None:
            want = (iova >> level.shift) & level.index_mask
            idx = [i for i in idx if i == want]
        run: list[int] = []  # indexes of a run of leaves with continuing addresses

        def flush() -> bool:
            if not run:
                return True
            first = int(entries[run[0]])
            start = base | run[0] << level.shift
            desc = pt.describe(first, depth)
            if len(run) == 1:
                text = f"{indent}[{run[0]}] {start:#x}: {desc}"
            else:
                end = (base | run[-1] << level.shift) + level.block_size
                text = (f"{indent}[{run[0]}..{run[-1]}] {start:#x}-{end:#x}: {len(run)} x "
                        f"{format_size(level.block_size)} from pa {pt.leaf_oa(first):#x}, "
                        f"first {desc}")
            run.clear()
            return emit(text)

        for i in idx:
            pte = int(entries[i])
            if pt.is_leaf(pte, depth):
                if run:
                    prev = int(entries[run[-1]])
                    attrs = pt.leaf_attrs(np.array([prev, pte], dtype=np.uint64))
                    same = (run[-1] + 1 == i and pt.leaf_oa(prev) + level.block_size
                            == pt.leaf_oa(pte) and attrs[0] == attrs[1])
                    if not same and not flush():
                        return False
                run.append(i)
                continue
            if not flush():
                return False
            start = base | i << level.shift
            if not emit(f"{indent}[{i}] {start:#x}: {pt.describe(pte, depth)}"):
                return False
            if pt.is_table(pte, depth) and not visit(view.deref(pte), depth + 1, start,
                                                     indent + "  "):
                return False
        return flush()

    root = pt.levels[0]
    lines.append(f"level {root.lvl} (root), {format_size(root.block_size)} per entry:")
    visit(view.tables[view.pgd], 0, 0, "  ")
    if truncated:
        lines.append(f"... (stopped at {max_lines} lines; use --max-lines or --iova)")
    return "\n".join(lines)

