"""Reading ftrace text output of the ``iommu`` and ``dma`` trace events.

Line framing is ftrace's default output (``kernel/trace/trace_output.c``):
``<comm>-<pid> [<cpu>] <flags> <secs.usecs>: <event>: <printk>``, with an
optional ``(tgid)`` column and any number of latency-flag characters; lines
printed by ``tp_printk`` into the kernel log (``[ secs] <event>: <printk>``)
are read too. The printk bodies follow the TP_printk formats of
``include/trace/events/iommu.h`` and ``include/trace/events/dma.h`` in every
version listed in ``../shared/reference/peers_traces.md`` §4:

* iommu ``map``/``unmap`` with and without the `` - <end>`` range (v5.17), and the
  unmerged ``dev=<name>`` variant; ``io_page_fault``; ``add_device_to_group``,
  ``remove_device_from_group``, ``attach_device_to_domain`` and
  ``detach_device_from_domain`` (gone in ~v6.3);
* dma ``map_page``/``map_resource`` (v6.12) and ``map_phys`` (2025), their unmaps,
  ``alloc``/``free`` (and ``_pages``, ``_sgt``) with and without ``dir=``,
  ``map_sg`` with and without the ``nents=a/b ents=c/d [TRUNCATED]`` counts,
  ``map_sg_err``, ``unmap_sg`` and the four syncs.

Traces pasted into mail arrive hard-wrapped and quoted: ``>`` quote markers
are stripped, and a line that does not start a new record is joined to the
record before it when that completes it. A line that is neither a header nor
a record nor a continuation is kept in :attr:`ParsedTrace.unparsed` with its
line number and the reason; nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DMA_DIRECTIONS",
    "KNOWN_EVENTS",
    "ParsedTrace",
    "TraceError",
    "TraceEvent",
    "Unparsed",
    "parse_trace",
    "parse_trace_file",
]

DMA_DIRECTIONS = ("BIDIRECTIONAL", "TO_DEVICE", "FROM_DEVICE", "NONE")
_MAX_JOIN = 3  # continuation lines one record may take


class TraceError(ValueError):
    """A trace file that cannot be used: the message names the file (and line)."""


@dataclass(frozen=True)
class TraceEvent:
    """One ``iommu`` or ``dma`` event: where it was, who ran it, and its fields."""

    line: int  # first physical line of the record (1-based)
    comm: str  # "" when the framing has no task (tp_printk lines)
    pid: int  # -1 when unknown
    cpu: int  # -1 when unknown
    ts: float  # seconds; -1 when the line had no framing
    name: str  # event name as printed: map, unmap, dma_map_phys, ...
    fields: dict[str, Any]
    fmt: str  # which format version matched, e.g. "map (range, v5.17+)"

    @property
    def task(self) -> str:
        return f"{self.comm}-{self.pid}" if self.pid >= 0 else "(no task)"


@dataclass(frozen=True)
class Unparsed:
    line: int
    reason: str
    text: str


@dataclass
class ParsedTrace:
    source: str
    events: list[TraceEvent] = field(default_factory=list)
    unparsed: list[Unparsed] = field(default_factory=list)
    other_events: Counter[str] = field(default_factory=Counter)  # framed, not iommu/dma
    header_lines: int = 0
    joined_lines: int = 0  # continuation lines joined to the record before them
    lines: int = 0
    formats: Counter[str] = field(default_factory=Counter)


_HEX = r"([0-9a-fA-F]+)"
_ARRAY = r"(\{[0-9a-fA-Fx,]*\})"
_DIR = r"(\w+)"
_ATTRS = r"([A-Z_|]*)"


def _hex(s: str) -> int:
    return int(s, 16)


def _array(s: str) -> list[int]:
    """``__print_array`` output: ``{0x1000,0x2000}``."""
    inner = s[1:-1]
    return [int(x, 16) for x in inner.split(",")] if inner else []


# (event names, format label, body regex, field names with converters)
_Conv = tuple[str, Any]
_FORMATS: list[tuple[tuple[str, ...], str, re.Pattern[str], tuple[_Conv, ...]]] = []


def _fmt(names: Iterable[str], label: str, pattern: str, *conv: _Conv) -> None:
    _FORMATS.append((tuple(names), label, re.compile(pattern + r"\s*$"), conv))


_IOVA = r"iova=0x" + _HEX
_fmt(["map"], "map (range, v5.17+)", rf"IOMMU: {_IOVA} - 0x{_HEX} paddr=0x{_HEX} size=(\d+)",
     ("iova", _hex), ("end", _hex), ("paddr", _hex), ("size", int))
_fmt(["map"], "map (before v5.17)", rf"IOMMU: {_IOVA} paddr=0x{_HEX} size=(\d+)",
     ("iova", _hex), ("paddr", _hex), ("size", int))
_fmt(["map"], "map (dev=, unmerged patch)", rf"IOMMU: dev=(\S+) {_IOVA} paddr=0x{_HEX} "
     r"size=(\d+)", ("device", str), ("iova", _hex), ("paddr", _hex), ("size", int))
_fmt(["unmap"], "unmap (range, v5.17+)",
     rf"IOMMU: {_IOVA} - 0x{_HEX} size=(\d+) unmapped_size=(\d+)",
     ("iova", _hex), ("end", _hex), ("size", int), ("unmapped_size", int))
_fmt(["unmap"], "unmap (before v5.17)", rf"IOMMU: {_IOVA} size=(\d+) unmapped_size=(\d+)",
     ("iova", _hex), ("size", int), ("unmapped_size", int))
_fmt(["unmap"], "unmap (dev=, unmerged patch)",
     rf"IOMMU: dev=(\S+) {_IOVA} size=(\d+) unmapped_size=(\d+)",
     ("device", str), ("iova", _hex), ("size", int), ("unmapped_size", int))
_fmt(["io_page_fault"], "io_page_fault", rf"IOMMU:(\S+) (\S+) {_IOVA} flags=0x{_HEX}",
     ("driver", str), ("device", str), ("iova", _hex), ("flags", _hex))
_fmt(["add_device_to_group", "remove_device_from_group"], "group",
     r"IOMMU: groupID=(-?\d+) device=(\S+)", ("group", int), ("device", str))
_fmt(["attach_device_to_domain", "detach_device_from_domain"], "attach/detach",
     r"IOMMU: device=(\S+)", ("device", str))
_DEV = r"(\S+)"
_fmt(["dma_map_page", "dma_map_resource", "dma_map_phys"], "dma map",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) phys_addr={_HEX} attrs={_ATTRS}",
     ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int), ("phys_addr", _hex),
     ("attrs", str))
_fmt(["dma_unmap_page", "dma_unmap_resource", "dma_unmap_phys"], "dma unmap",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) attrs={_ATTRS}",
     ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int), ("attrs", str))
_fmt(["dma_alloc", "dma_alloc_pages", "dma_alloc_sgt_err"], "dma alloc (dir=)",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) virt_addr=(\S+) flags=(\S*) "
     rf"attrs={_ATTRS}", ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int),
     ("virt_addr", str), ("gfp", str), ("attrs", str))
_fmt(["dma_alloc"], "dma alloc (v6.12.0, no dir)",
     rf"{_DEV} dma_addr={_HEX} size=(\d+) virt_addr=(\S+) flags=(\S*) attrs={_ATTRS}",
     ("device", str), ("dma_addr", _hex), ("size", int), ("virt_addr", str), ("gfp", str),
     ("attrs", str))
_fmt(["dma_free", "dma_free_pages"], "dma free (dir=)",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) virt_addr=(\S+) attrs={_ATTRS}",
     ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int), ("virt_addr", str),
     ("attrs", str))
_fmt(["dma_free"], "dma free (v6.12.0, no dir)",
     rf"{_DEV} dma_addr={_HEX} size=(\d+) virt_addr=(\S+) attrs={_ATTRS}",
     ("device", str), ("dma_addr", _hex), ("size", int), ("virt_addr", str), ("attrs", str))
_fmt(["dma_alloc_sgt"], "dma alloc_sgt",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) phys_addrs={_ARRAY} flags=(\S*) "
     rf"attrs={_ATTRS}", ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int),
     ("phys_addrs", _array), ("gfp", str), ("attrs", str))
_fmt(["dma_free_sgt"], "dma free_sgt",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+) phys_addrs={_ARRAY}",
     ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int), ("phys_addrs", _array))
_fmt(["dma_map_sg"], "dma_map_sg (counts)",
     rf"{_DEV} dir={_DIR} nents=(\d+)/(\d+) ents=(\d+)/(\d+)( \[TRUNCATED\])? "
     rf"dma_addrs={_ARRAY} sizes={_ARRAY} phys_addrs={_ARRAY} attrs={_ATTRS}",
     ("device", str), ("dir", str), ("nents_traced", int), ("nents", int),
     ("ents_traced", int), ("ents", int), ("truncated", bool), ("dma_addrs", _array),
     ("sizes", _array), ("phys_addrs", _array), ("attrs", str))
_fmt(["dma_map_sg"], "dma_map_sg (v6.12, no counts)",
     rf"{_DEV} dir={_DIR} dma_addrs={_ARRAY} sizes={_ARRAY} phys_addrs={_ARRAY} "
     rf"attrs={_ATTRS}", ("device", str), ("dir", str), ("dma_addrs", _array),
     ("sizes", _array), ("phys_addrs", _array), ("attrs", str))
_fmt(["dma_map_sg_err"], "dma_map_sg_err",
     rf"{_DEV} dir={_DIR} dma_addrs={_ARRAY} err=(-?\d+) attrs={_ATTRS}",
     ("device", str), ("dir", str), ("phys_addrs", _array), ("err", int), ("attrs", str))
_fmt(["dma_unmap_sg"], "dma_unmap_sg", rf"{_DEV} dir={_DIR} phys_addrs={_ARRAY} attrs={_ATTRS}",
     ("device", str), ("dir", str), ("phys_addrs", _array), ("attrs", str))
_fmt(["dma_sync_single_for_cpu", "dma_sync_single_for_device"], "dma sync single",
     rf"{_DEV} dir={_DIR} dma_addr={_HEX} size=(\d+)",
     ("device", str), ("dir", str), ("dma_addr", _hex), ("size", int))
_fmt(["dma_sync_sg_for_cpu", "dma_sync_sg_for_device"], "dma sync sg",
     rf"{_DEV} dir={_DIR} dma_addrs={_ARRAY} sizes={_ARRAY}",
     ("device", str), ("dir", str), ("dma_addrs", _array), ("sizes", _array))

_BY_EVENT: dict[str, list[tuple[str, re.Pattern[str], tuple[_Conv, ...]]]] = {}
for _names, _label, _pattern, _conv in _FORMATS:
    for _name in _names:
        _BY_EVENT.setdefault(_name, []).append((_label, _pattern, _conv))
KNOWN_EVENTS = frozenset(_BY_EVENT)

_FRAME = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S+)\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$")
_KLOG = re.compile(r"^\s*\[\s*(?P<ts>\d+\.\d+)\]\s+(?P<event>\w+):\s(?P<body>.*)$")
_BARE = re.compile(r"^\s*(?P<event>\w+):\s(?P<body>.*)$")  # a body pasted without framing
_QUOTE = re.compile(r"^(?:\s?>)+\s?")


def _parse_body(name: str, body: str) -> tuple[dict[str, Any], str] | None:
    """The fields of an event body, or None when no format of ``name`` matches it."""
    body = body.strip()
    for label, pattern, conv in _BY_EVENT.get(name, ()):
        m = pattern.match(body)
        if m is None:
            continue
        fields = {key: fn(value) for (key, fn), value in zip(conv, m.groups(), strict=True)}
        if "dir" in fields and fields["dir"] not in DMA_DIRECTIONS:
            continue
        return fields, label
    return None


@dataclass
class _Pending:
    line: int
    head: dict[str, str]
    body: str
    joined: int = 0


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> ParsedTrace:
    """Parse ftrace text; never raises for bad lines (see :class:`ParsedTrace`)."""
    out = ParsedTrace(source)
    pending: _Pending | None = None  # the last record: a wrapped tail may follow it

    def finish(p: _Pending) -> None:
        parsed = _parse_body(p.head["event"], p.body)
        if parsed is None:
            span = f" (lines {p.line}-{p.line + p.joined} read as one record)" \
                if p.joined else ""
            out.unparsed.append(Unparsed(p.line, f"{p.head['event']}: the fields do not "
                                         f"match any known format of this event{span}",
                                         f"{p.head['event']}: {p.body}"))
            return
        fields, label = parsed
        ev = TraceEvent(p.line, p.head.get("comm", ""), int(p.head.get("pid", -1)),
                        int(p.head.get("cpu", -1)), float(p.head.get("ts", -1.0)), p.head["event"],
                        fields, label)
        out.events.append(ev)
        out.formats[label] += 1

    for n, raw in enumerate(lines, 1):
        out.lines = n
        line = _QUOTE.sub("", raw.rstrip("\r\n"))
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            out.header_lines += 1
            continue
        m = _FRAME.match(line) or _KLOG.match(line)
        if m is None:
            bare = _BARE.match(line)
            m = bare if bare is not None and bare["event"] in KNOWN_EVENTS else None
        if m is not None:
            head = {k: v for k, v in m.groupdict().items() if v is not None}
            if pending is not None:
                finish(pending)
                pending = None
            if head["event"] not in KNOWN_EVENTS:
                out.other_events[head["event"]] += 1
                continue
            pending = _Pending(n, head, head["body"])
            continue
        # not a new record: a continuation of the one before, or nothing we know
        if pending is not None and pending.joined < _MAX_JOIN:
            for sep in (" ", ""):
                body = pending.body + sep + line.strip()
                if _parse_body(pending.head["event"], body) is not None:
                    pending.body = body
                    pending.joined += 1
                    out.joined_lines += 1
                    break
            else:
                complete = _parse_body(pending.head["event"], pending.body) is not None
                if not complete:  # keep collecting: the record may need more lines
                    pending.body = pending.body + " " + line.strip()
                    pending.joined += 1
                    out.joined_lines += 1
                else:
                    out.unparsed.append(Unparsed(n, "not an ftrace record", line.strip()))
            continue
        out.unparsed.append(Unparsed(n, "not an ftrace record", line.strip()))
    if pending is not None:
        finish(pending)
    return out


def parse_trace_file(path: str | Path, *, strict: bool = False) -> ParsedTrace:
    """Parse the trace in ``path``. Raises :class:`TraceError` naming the file (and the
    line) when it cannot be read, holds no iommu or dma event, or, with ``strict``,
    has any line that cannot be parsed."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if b"\0" in data[:4096]:
        raise TraceError(f"{path}: a binary file; replay reads ftrace text output (the "
                         "trace file, not trace.dat)")
    text = data.decode("utf-8", errors="replace")
    trace = parse_trace(text.splitlines(), str(path))
    if strict and trace.unparsed:
        u = trace.unparsed[0]
        raise TraceError(f"{path}:{u.line}: {u.reason}: {u.text[:80]!r}")
    if not trace.events:
        first = f"; first unparsed line {trace.unparsed[0].line}: {trace.unparsed[0].reason}" \
            if trace.unparsed else ""
        raise TraceError(f"{path}: no iommu or dma trace event in {trace.lines} lines{first}")
    return trace
