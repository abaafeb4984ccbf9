"""Shared helpers for the benchmark scripts: timing by median, a figure table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: float | None = None  # bound the issue sets, same unit
    at_least: bool = False  # the target is a lower bound (a speedup), not an upper one

    def row(self) -> str:
        verdict = ""
        if self.target is not None:
            met = self.value >= self.target if self.at_least else self.value <= self.target
            verdict = f"target {'>=' if self.at_least else '<='} {self.target:g} {self.unit}: " \
                + ("met" if met else "MISSED")
        return f"{self.name:<52} {self.value:>10.2f} {self.unit:<10} {verdict}"


def run_seconds(run: Callable[[], object], setup: Callable[[], object] | None,
                repeat: int) -> list[float]:
    """Wall time of ``run`` in each of ``repeat`` runs, each after a fresh ``setup``."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(run: Callable[[], object], setup: Callable[[], object] | None,
                   repeat: int) -> float:
    """Median wall time of ``run`` over ``repeat`` runs, each after a fresh ``setup``."""
    return statistics.median(run_seconds(run, setup, repeat))


def print_figures(title: str, figures: list[Figure]) -> None:
    print(title)
    for fig in figures:
        print("  " + fig.row())
