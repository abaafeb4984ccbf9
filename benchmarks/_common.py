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
    cpu: float | None = None  # process CPU time beside the wall figure, same unit


    def row(self) -> str:
        verdict = ""
        if self.target is not None:
            met = self.value >= self.target if self.at_least else self.value <= self.target
            verdict = f"target {'>=' if self.at_least else '<='} {self.target:g} {self.unit}: " \
                + ("met" if met else "MISSED")
        cpu = f"(cpu {self.cpu:.2f}) " if self.cpu is not None else ""
        return f"{self.name:<52} {self.value:>10.2f} {self.unit:<10} {cpu}{verdict}"


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


def run_wall_cpu(run: Callable[[], object], setup: Callable[[], object] | None,
                 repeat: int) -> list[tuple[float, float]]:
    """Wall and process CPU seconds of ``run`` in each of ``repeat`` runs.

    This VM charges first-touch page faults to the process and its wall times vary
    twofold under load, so the scripts print CPU time beside each wall figure.
    """
    pairs = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        pairs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return pairs


def median_wall_cpu(run: Callable[[], object], setup: Callable[[], object] | None,
                    repeat: int) -> tuple[float, float]:
    """Median wall and median CPU seconds of ``run`` over ``repeat`` runs."""
    pairs = run_wall_cpu(run, setup, repeat)
    return (statistics.median(w for w, _ in pairs), statistics.median(c for _, c in pairs))


def print_figures(title: str, figures: list[Figure]) -> None:
    print(title)
    for fig in figures:
        print("  " + fig.row())
