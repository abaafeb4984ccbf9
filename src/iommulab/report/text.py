"""Plain-text tables and human-readable sizes for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_size", "format_table"]

_UNITS = ("", "K", "M", "G", "T", "P")


def format_size(nbytes: int) -> str:
    """``4096 -> "4K"``, ``3 << 30 -> "3G"``, ``1536 -> "1.5K"``; binary units."""
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 align: str | None = None) -> str:
    """A table with a header rule; ``align`` has one ``l``/``r`` per column."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                               for c, w, a in zip(row, widths, align, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
