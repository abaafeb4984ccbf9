"""Axis decisions shared by the HTML and JSON reports (model's own presentation code).

A plot's y axis is logarithmic when its positive values span :data:`LOG_SPAN` or
more (two orders of magnitude), unless the plot forces a scale; log ticks sit at
powers of ten. Text widths are estimated from character classes, generously,
so that margins computed from them keep every label inside its SVG.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..scenarios import Plot

__all__ = ["LOG_SPAN", "linear_ticks", "log_ticks", "plot_is_log", "text_width", "tick_label"]

#: max / min of a plot's positive values from which its axis is drawn log scale
LOG_SPAN = 100.0

_NARROW = set("ijlrtfI.,:;!|'() -")
_WIDE = set("mwMW@%")


def text_width(text: str, size: float = 11.0) -> float:
    """Upper estimate of ``text``'s width in pixels at font size ``size`` (sans-serif)."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.36
        elif ch in _WIDE or not ch.isascii():
            em += 0.95
        elif ch.isupper():
            em += 0.72
        else:
            em += 0.62
    return em * size


def plot_is_log(plot: Plot) -> bool:
    """The plot's own choice, or (``log=None``) whether its positive values span
    :data:`LOG_SPAN` or more."""
    if plot.log is not None:
        return plot.log
    return spans_decades(v for vals in plot.series.values() for v in vals)


def spans_decades(values: Iterable[float]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) >= LOG_SPAN


def log_ticks(values: Iterable[float]) -> list[float]:
    """Powers of ten from one decade below the smallest positive value (so that
    its bar has a height) up to the first power at or above the largest."""
    positive = [v for v in values if v > 0] or [1.0]
    lo = math.ceil(math.log10(min(positive))) - 1
    hi = max(math.ceil(math.log10(max(positive))), lo + 1)
    return [10.0 ** e for e in range(lo, hi + 1)]


def linear_ticks(top: float) -> list[float]:
    """0 and steps of 1, 2 or 5 times a power of ten up to at least ``top``, at most 6."""
    if top <= 0:
        return [0.0, 1.0]
    step = 10.0 ** math.floor(math.log10(top))
    for mult in (0.2, 0.5, 1, 2, 5, 10):
        if top / (step * mult) <= 5:
            step *= mult
            break
    n = math.ceil(top / step - 1e-9)
    return [step * i for i in range(n + 1)]


def tick_label(v: float) -> str:
    """``1500 -> "1.5k"``, ``2e9 -> "2G"``, ``0.1 -> "0.1"`` (SI prefixes)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"
