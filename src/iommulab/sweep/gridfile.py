"""A sweep's grid from a small TOML or YAML file (lab).

The file is a table (mapping) with a ``grid`` table of parameter -> list of values and,
optionally, ``set`` (fixed parameters), ``seeds`` (how many) and ``platforms`` (a
list); the command line's options add to it and override it. TOML is read with the
standard library's :mod:`tomllib`; YAML needs PyYAML (``pip install pyyaml``). A value
is what ``--set`` takes, or a number or boolean, or for a parameter that takes a list,
a list of its items::

    [grid]
    guest_ram = ["16M", "64M"]
    modes = [["strict", "lazy"], "strict"]
    [set]
    packets = 300
"""

from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ..scenarios.base import FileError
from .grid import ITEM_JOIN

__all__ = ["GridFile", "load_grid_file"]


@dataclass(frozen=True)
class GridFile:
    """What a grid file gives: values as ``--set`` text (``+`` joining a list's items)."""

    grid: dict[str, list[str]] = field(default_factory=dict)
    settings: tuple[str, ...] = ()
    seeds: int | None = None
    platforms: tuple[str, ...] = ()


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and value and all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        return ITEM_JOIN.join(map(str, value))
    raise FileError(f"{where}: a value is a string, number, boolean or a list of "
                    f"strings or numbers, not {value!r}")


def _parse(path: str, text: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise FileError(f"{path}: not TOML: {e}") from None
    if ext in (".yaml", ".yml"):
        try:
            yaml = importlib.import_module("yaml")
        except ImportError:
            raise FileError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                            "a TOML grid file needs nothing more") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FileError(f"{path}: not YAML: {' '.join(str(e).split())}") from None
    raise FileError(f"{path}: a grid file ends in .toml, .yaml or .yml")


def load_grid_file(path: str) -> GridFile:
    """Read ``path`` (see the module docstring); :class:`FileError` names what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FileError(f"{path}: cannot read: {e.strerror or e}") from None
    doc = _parse(path, text)
    if not isinstance(doc, dict):
        raise FileError(f"{path}: want a table with a 'grid' table in it")
    unknown = sorted(set(doc) - {"grid", "set", "seeds", "platforms"})
    if unknown:
        raise FileError(f"{path}: unknown key {unknown[0]!r} (keys: grid, set, seeds, "
                        "platforms)")
    grid_doc = doc.get("grid", {})
    if not isinstance(grid_doc, dict):
        raise FileError(f"{path}: 'grid' must be a table of parameter = [values]")
    grid: dict[str, list[str]] = {}
    for key, values in grid_doc.items():
        where = f"{path}: grid.{key}"
        if not isinstance(values, list) or not values:
            raise FileError(f"{where}: want a non-empty list of values")
        grid[str(key)] = [_text(v, where) for v in values]
    set_doc = doc.get("set", {})
    if not isinstance(set_doc, dict):
        raise FileError(f"{path}: 'set' must be a table of parameter = value")
    settings = tuple(f"{k}={_text(v, f'{path}: set.{k}').replace(ITEM_JOIN, ',')}"
                     for k, v in set_doc.items())
    seeds = doc.get("seeds")
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool)
                              or seeds < 1):
        raise FileError(f"{path}: seeds: want a positive integer, not {seeds!r}")
    platforms = doc.get("platforms", [])
    if isinstance(platforms, str):
        platforms = [platforms]
    if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
        raise FileError(f"{path}: platforms: want a list of platform names")
    return GridFile(grid, settings, seeds, tuple(platforms))
