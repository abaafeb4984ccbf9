"""A sweep's points (lab): a grid of scenario parameters crossed with seeds and platforms.

A grid value is written as ``--set`` takes it; for a parameter that takes a
comma-separated list (``many``), one grid value joins its items with ``+``
(``--grid modes=strict+lazy,strict`` is two points: both modes, then strict alone).
Every value is checked against the scenario's declared bounds on every platform of the
sweep before anything runs, as ``iommulab run`` checks ``--set``; checks across
parameters (:attr:`Scenario.check`) belong to a point and fail that point only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..scenarios import SCENARIOS, Param, Scenario, UsageError

__all__ = ["Point", "SweepSpec", "expand", "parse_grid_option"]

#: joins the items of one grid value of a ``many`` parameter
ITEM_JOIN = "+"


@dataclass(frozen=True)
class Point:
    """One run of a sweep: the scenario with ``settings`` (``key=value`` as ``--set``
    takes them, the grid's and the fixed ones), one seed, one platform.

    ``grid`` holds the grid parameters' parsed values, for the table and the plots."""

    index: int
    scenario: str
    platform: str
    seed: int
    quick: bool
    settings: tuple[str, ...]
    grid: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        """A name for this point that depends only on what it runs (16 hex digits): the
        file its report is kept in, so that a resumed sweep finds it."""
        key = json.dumps([self.scenario, self.platform, self.seed, self.quick,
                          sorted(self.settings)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: the grid, fixed settings, seeds and platforms of one scenario."""

    scenario: str
    grid: dict[str, list[str]]
    settings: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    platforms: tuple[str, ...] = ()
    quick: bool = False

    def describe(self) -> dict[str, Any]:
        """The spec as JSON (``sweep.json`` in the output directory)."""
        return {"scenario": self.scenario, "grid": self.grid, "set": list(self.settings),
                "seeds": list(self.seeds), "platforms": list(self.platforms),
                "quick": self.quick}


def parse_grid_option(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2`` to ``(key, [v1, v2])``; :class:`UsageError` for a malformed one."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--grid {text!r}: expected key=value1,value2,...")
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
        raise UsageError(f"--grid {text}: give values separated by commas")
    return key, items


def _scenario(name: str) -> Scenario:
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise UsageError(f"no scenario {name!r} (scenarios: {', '.join(SCENARIOS)})")
    return scenario


def _check_value(scenario: Scenario, param: Param, value: str, platforms: Sequence[str]
                 ) -> tuple[str, Any]:
    """The value's canonical ``--set`` text and its parsed value, checked against the
    parameter's bounds on each platform (the maximum can depend on it)."""
    text = value.replace(ITEM_JOIN, ",") if param.many else value
    parsed: Any = None
    for platform in platforms:
        try:
            parsed = param.parse(text, platform)
        except UsageError as e:
            msg = str(e).replace(f"--set {param.name}={text}", f"--grid {param.name}={value}", 1)
            raise UsageError(f"{scenario.name}: {msg} (bounds: iommulab run {scenario.name} "
                             "--help)") from None
    return param.text(parsed), parsed


def _table_value(param: Param, parsed: Any) -> Any:
    """A grid value as the results table holds it: numbers as numbers, a list of
    several items joined with ``+`` (a list of one item is that item)."""
    if param.many:
        return parsed[0] if len(parsed) == 1 else ITEM_JOIN.join(map(str, parsed))
    return parsed


def expand(spec: SweepSpec) -> list[Point]:
    """The points of ``spec`` in table order: platforms, then the grid's cross product
    (its first key varying slowest), then seeds. Raises :class:`UsageError` naming the
    first value out of its bounds, an unknown parameter or platform, before any run."""
    scenario = _scenario(spec.scenario)
    platforms = spec.platforms or scenario.platforms[:1]
    for platform in platforms:
        if platform not in scenario.platforms:
            raise UsageError(scenario.platform_error(platform))
    if not spec.seeds:
        raise UsageError("--seeds: at least one seed")
    by_name = {p.name: p for p in scenario.params}
    known = ", ".join(sorted(by_name)) or "none"
    fixed: list[str] = []
    for setting in spec.settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise UsageError(f"--set {setting!r}: expected key=value")
        if key not in by_name:
            raise UsageError(f"--set {key}: no such parameter (parameters: {known})")
        if key in spec.grid:
            raise UsageError(f"{key}: given both by --set and by --grid")
        for platform in platforms:
            try:
                by_name[key].parse(text, platform)
            except UsageError as e:
                raise UsageError(f"{scenario.name}: {e} (bounds: iommulab run "
                                 f"{scenario.name} --help)") from None
        fixed.append(setting)
    axes: list[list[tuple[str, str, Any]]] = []  # per grid key: (name, text, table value)
    for key, values in spec.grid.items():
        if key not in by_name:
            raise UsageError(f"--grid {key}: no such parameter (parameters: {known})")
        if not values:
            raise UsageError(f"--grid {key}: give at least one value")
        seen: dict[str, Any] = {}
        for value in values:
            text, parsed = _check_value(scenario, by_name[key], value, platforms)
            seen.setdefault(text, _table_value(by_name[key], parsed))  # 64M and 67108864: one
        axes.append([(key, text, v) for text, v in seen.items()])
    points: list[Point] = []
    for platform in platforms:
        for combo in itertools.product(*axes):
            settings = tuple(f"{k}={t}" for k, t, _ in combo) + tuple(fixed)
            grid = tuple((k, v) for k, _, v in combo)
            for seed in spec.seeds:
                points.append(Point(len(points), scenario.name, platform, seed, spec.quick,
                                    settings, grid))
    return points
