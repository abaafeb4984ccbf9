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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..sizes import parse_size

__all__ = [
    "FileError",
    "Param",
    "Plot",
    "Progress",
    "RunContext",
    "Scenario",
    "ScenarioResult",
    "Table",
    "UsageError",
    "check_host_memory",
    "parse_params",
]


class UsageError(ValueError):
    """A bad scenario name, parameter or value (the command exits with status 2)."""


class FileError(Exception):
    """A file the command cannot use: exit status 3, with a one-line message."""


def _as_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _as_bool(text: str) -> bool:
    if text.lower() in ("1", "yes", "true", "on"):
        return True
    if text.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


_KINDS: dict[str, Callable[[str], Any]] = {"int": _as_int, "size": parse_size, "bool": _as_bool,
                                           "str": str}


def _bound_text(kind: str, value: int) -> str:
    from ..report import format_size
    return format_size(value) if kind == "size" else str(value)


@dataclass(frozen=True)
class Param:
    """One ``--set`` parameter: ``kind`` is int, size (``64M``), bool or str;
    ``many`` takes a comma-separated list; ``quick`` replaces the default under ``--quick``.

    Bounds: ``choices`` (the allowed values), ``minimum``, ``maximum`` (a number, or a
    function of the platform for limits such as an address width), ``multiple`` (each
    value a multiple of it); ``why`` says where the bounds come from."""

    name: str
    kind: str
    default: Any
    doc: str
    quick: Any = None
    many: bool = False
    choices: tuple[Any, ...] = ()
    minimum: int | None = None
    maximum: int | Callable[[str], int] | None = None
    multiple: int | None = None
    why: str = ""

    def text(self, value: Any) -> str:
        """``value`` as ``--set`` would take it (sizes as ``64M``)."""
        from ..report import format_size
        one = format_size if self.kind == "size" else str
        return ",".join(map(one, value)) if self.many else one(value)

    def max_on(self, platform: str) -> int | None:
        """The maximum on ``platform`` (None: no upper bound)."""
        return self.maximum(platform) if callable(self.maximum) else self.maximum

    def bounds(self, platforms: Sequence[str]) -> str:
        """The bounds as ``--list`` shows them, e.g. ``2M..512M, a multiple of 2M``."""
        k = self.kind
        if self.choices:
            return "one of " + "|".join(map(str, self.choices)) + (", comma-separated"
                                                                  if self.many else "")
        lo = "" if self.minimum is None else _bound_text(k, self.minimum)
        if callable(self.maximum):
            his = {pl: _bound_text(k, self.maximum(pl)) for pl in platforms}
            hi = (next(iter(his.values())) if len(set(his.values())) == 1 else
                  "max " + ", ".join(f"{v} on {pl}" for pl, v in his.items()))
            text = f"{lo}.." if hi.startswith("max ") else f"{lo}..{hi}"
            text = f"{text} ({hi})" if hi.startswith("max ") else text
        else:
            hi = "" if self.maximum is None else _bound_text(k, self.maximum)
            text = f"{lo}..{hi}" if hi else f"at least {lo}" if lo else "any"
        if self.multiple:
            text += f", a multiple of {_bound_text(k, self.multiple)}"
        return text

    def parse(self, text: str, platform: str = "") -> Any:
        if not text.strip():
            raise UsageError(f"--set {self.name}=: give a value")
        items = [t.strip() for t in text.split(",")] if self.many else [text.strip()]
        values = []
        for item in items:
            try:
                value = _KINDS[self.kind](item)
            except ValueError as e:
                raise UsageError(f"--set {self.name}={text}: {e}") from None
            self.check(value, platform, f"--set {self.name}={text}: {item}")
            values.append(value)
        if self.many and not values:
            raise UsageError(f"--set {self.name}=: give at least one value")
        return tuple(values) if self.many else values[0]

    def check(self, value: Any, platform: str, where: str) -> None:
        """Raise :class:`UsageError` naming the bound ``value`` breaks."""
        why = ""  # the reasons are in --help and --list; the message names the bound
        if self.choices and value not in self.choices:
            raise UsageError(f"{where} is not one of {', '.join(map(str, self.choices))}")
        if self.kind not in ("int", "size"):
            return
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"{where} is below the minimum "
                             f"{_bound_text(self.kind, self.minimum)}{why}")
        hi = self.max_on(platform) if platform else None
        if hi is not None and value > hi:
            on = f" on {platform}" if callable(self.maximum) else ""
            raise UsageError(f"{where} is above the maximum {_bound_text(self.kind, hi)}"
                             f"{on}{why}")
        if self.multiple and value % self.multiple:
            raise UsageError(f"{where} is not a multiple of "
                             f"{_bound_text(self.kind, self.multiple)}{why}")


def parse_params(params: Sequence[Param], settings: Sequence[str], quick: bool,
                 platform: str = "") -> dict[str, Any]:
    """Defaults (``quick`` ones under ``--quick``) overridden by ``key=value`` settings,
    each checked against its bounds on ``platform``."""
    by_name = {p.name: p for p in params}
    values = {p.name: p.quick if quick and p.quick is not None else p.default for p in params}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise UsageError(f"--set {setting!r}: expected key=value")
        if key not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise UsageError(f"--set {key}: no such parameter (parameters: {known})")
        values[key] = by_name[key].parse(text, platform)
    return values


def host_memory_available() -> int | None:
    """MemAvailable of this host in bytes (None where /proc/meminfo does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_host_memory(need: int, what: str) -> None:
    """Raise :class:`UsageError` when the model's ``need`` bytes for ``what`` exceed the
    memory this host has available (lab: the model's own arrays, not the modelled RAM)."""
    have = host_memory_available()
    if have is not None and need > have:
        from ..report import format_size
        raise UsageError(f"{what} needs about {format_size(need)} of this host's memory "
                         f"for the model, and {format_size(have)} is available")


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
        self._start: float | None = None

    def eta(self, done: int, total: int, now: float | None = None) -> str:
        """Time left at the mean pace so far (``--:--`` before the first step is done)."""
        now = time.monotonic() if now is None else now
        if self._start is None:
            self._start = now
        if done <= 0 or done >= total:
            return "--:--" if done < total else "00:00"
        left = round((now - self._start) / done * (total - done))
        return f"{left // 3600}:{left // 60 % 60:02}:{left % 60:02}" if left >= 3600 else \
            f"{left // 60:02}:{left % 60:02}"

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if self.stream is None or total <= 0:
            return
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} ETA {self.eta(done, total)} "
                          f"{what[:40]:<40}")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\r" + " " * (self.width + 60) + "\r")
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
    #: checks across parameters and against the host, before any work starts: raises
    #: :class:`UsageError` (``params``, ``platform``)
    check: Callable[[dict[str, Any], str], None] | None = None
    #: builds IOMMU domains whose page tables ``--save-state`` can keep
    saves_state: bool = True
    #: platforms it cannot run on, with the reason the refusal gives
    not_on: tuple[tuple[str, str], ...] = ()

    def platform_error(self, platform: str) -> str:
        """Why ``platform`` is refused: not one of :attr:`platforms`, and what
        :attr:`not_on` says of it."""
        why = dict(self.not_on).get(platform)
        return f"{self.name} runs on {', '.join(self.platforms)}, not {platform}" + (
            f": {why}" if why else "")

    @property
    def summary(self) -> str:
        first = _first_paragraph(self.doc)
        return first.removeprefix(f"{self.name}: ")

    def result(self, ctx: RunContext, title: str) -> ScenarioResult:
        """An empty result of this scenario for ``ctx``."""
        return ScenarioResult(self.name, title, ctx.platform, ctx.seed, ctx.quick,
                              dict(ctx.params), param_text={
                                  p.name: p.text(ctx.params[p.name]) for p in self.params})

    def help(self) -> str:
        """``iommulab run NAME --help``: the module docstring, then :meth:`describe`."""
        return f"usage: iommulab run {self.name} [--platform P] [--set KEY=VALUE ...]\n\n" \
               f"{self.doc.strip()}\n\n{self.describe()}"

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  platforms: {', '.join(self.platforms)}",
                 "  parameters (--set key=value):"]
        for p in self.params:
            default = p.text(p.default)
            quick = "" if p.quick is None else f"; --quick: {p.text(p.quick)}"
            lines.append(f"    {p.name}={default}{quick}  {p.doc}")
            why = f" ({p.why})" if p.why else ""
            lines.append(f"      bounds: {p.bounds(self.platforms)}{why}")
        return "\n".join(lines)


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    text = (doc or "").strip().split("\n\n")[0]
    return re.sub(r"\s+", " ", text)
