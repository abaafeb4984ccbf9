"""What a scenario is (lab): documented parameters in, tables, plots and headline numbers out.

A scenario is a small module with a :class:`Scenario` at its bottom. ``iommulab run``
parses ``--set key=value`` against the scenario's :class:`Param` list, runs it and
renders the :class:`ScenarioResult` as terminal tables, versioned JSON
(:mod:`iommulab.report.json_report`) or one self-contained HTML file
(:mod:`iommulab.report.html`). Everything in a result but ``host`` (timings) is a
function of the parameters and the seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..sizes import parse_size

__all__ = [
    "Param",
    "Plot",
    "Progress",
    "RunContext",
    "Scenario",
    "ScenarioResult",
    "Table",
    "UsageError",
    "parse_params",
]


class UsageError(ValueError):
    """A bad scenario name, parameter or value (the command exits with status 2)."""


def _as_int(text: str) -> int:
    return int(text, 0)


def _as_bool(text: str) -> bool:
    if text.lower() in ("1", "yes", "true", "on"):
        return True
    if text.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


_KINDS: dict[str, Callable[[str], Any]] = {"int": _as_int, "size": parse_size, "bool": _as_bool,
                                           "str": str}


@dataclass(frozen=True)
class Param:
    """One ``--set`` parameter: ``kind`` is int, size (``64M``), bool or str;
    ``many`` takes a comma-separated list; ``choices`` bounds str values;
    ``quick`` replaces the default under ``--quick``."""

    name: str
    kind: str
    default: Any
    doc: str
    quick: Any = None
    many: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None

    def text(self, value: Any) -> str:
        """``value`` as ``--set`` would take it (sizes as ``64M``)."""
        from ..report import format_size
        one = format_size if self.kind == "size" else str
        return ",".join(map(one, value)) if self.many else one(value)

    def parse(self, text: str) -> Any:
        items = [t.strip() for t in text.split(",")] if self.many else [text.strip()]
        values = []
        for item in items:
            try:
                value = _KINDS[self.kind](item)
            except ValueError as e:
                raise UsageError(f"--set {self.name}={text}: {e}") from None
            if self.choices and value not in self.choices:
                raise UsageError(f"--set {self.name}={text}: {item!r} is not one of "
                                 f"{', '.join(self.choices)}")
            if self.minimum is not None and value < self.minimum:
                raise UsageError(f"--set {self.name}={text}: {item} is below {self.minimum}")
            values.append(value)
        if self.many and not values:
            raise UsageError(f"--set {self.name}=: give at least one value")
        return tuple(values) if self.many else values[0]


def parse_params(params: Sequence[Param], settings: Sequence[str], quick: bool) -> dict[str, Any]:
    """Defaults (``quick`` ones under ``--quick``) overridden by ``key=value`` settings."""
    by_name = {p.name: p for p in params}
    values = {p.name: p.quick if quick and p.quick is not None else p.default for p in params}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise UsageError(f"--set {setting!r}: expected key=value")
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise UsageError(f"--set {key}: no such parameter (parameters: {known})")
        values[key] = by_name[key].parse(text)
    return values


@dataclass(frozen=True)
class Table:
    """A result table: ``align`` has one ``l``/``r`` per column."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    align: str | None = None


@dataclass(frozen=True)
class Plot:
    """A grouped bar chart: one bar per series in each category (``log``: log-scale y;
    ``None``: decided from the data, see :func:`iommulab.report.axes.plot_is_log`)."""

    title: str
    y_label: str
    categories: list[str]
    series: dict[str, list[float]]
    log: bool | None = None


@dataclass
class ScenarioResult:
    """What one run produced; ``headline`` holds the numbers tests and users check first."""

    scenario: str
    title: str
    platform: str
    seed: int
    quick: bool
    params: dict[str, Any]
    headline: dict[str, int | float | str] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: structured lists for JSON (a replay's disagreements, unparsed lines)
    details: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # what the report is of, when not the scenario (a trace file)
    param_text: dict[str, str] = field(default_factory=dict)  # params as a user writes them
    #: saved domain states by name (see :mod:`iommulab.inspect`)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: host times (seconds): the only figures that are not a function of params and seed
    host: dict[str, float] = field(default_factory=dict)
    #: a replay's maps, unmaps and faults per device over time (see
    #: :mod:`iommulab.trace.timeline`); None for a scenario
    timeline: dict[str, Any] | None = None


class Progress:
    """A progress bar on a terminal's stderr; silent when ``stream`` is None."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._shown = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if self.stream is None or total <= 0:
            return
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} {what[:40]:<40}")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\r" + " " * (self.width + 50) + "\r")
            self.stream.flush()
            self._shown = False


@dataclass
class RunContext:
    """What a scenario's run function gets: parsed parameters, seed, platform, progress."""

    params: dict[str, Any]
    seed: int
    platform: str
    quick: bool
    progress: Progress = field(default_factory=Progress)
    save_states: bool = False  # keep the domain states for ``inspect`` (they can be large)


@dataclass(frozen=True)
class Scenario:
    """A named scenario: ``doc`` is its module docstring, whose first paragraph reads
    ``name: summary``; ``iommulab run --list`` shows the summary."""

    name: str
    doc: str
    params: tuple[Param, ...]
    platforms: tuple[str, ...]
    run: Callable[[RunContext], ScenarioResult]

    @property
    def summary(self) -> str:
        first = _first_paragraph(self.doc)
        return first.removeprefix(f"{self.name}: ")

    def result(self, ctx: RunContext, title: str) -> ScenarioResult:
        """An empty result of this scenario for ``ctx``."""
        return ScenarioResult(self.name, title, ctx.platform, ctx.seed, ctx.quick,
                              dict(ctx.params), param_text={
                                  p.name: p.text(ctx.params[p.name]) for p in self.params})

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  platforms: {', '.join(self.platforms)}",
                 "  parameters (--set key=value):"]
        for p in self.params:
            default = p.text(p.default)
            quick = "" if p.quick is None else f"; --quick: {p.text(p.quick)}"
            choices = f" ({'|'.join(p.choices)})" if p.choices else ""
            lines.append(f"    {p.name}={default}{quick}  {p.doc}{choices}")
        return "\n".join(lines)


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    text = (doc or "").strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", text)
