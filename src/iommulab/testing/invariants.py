"""Every ``_check()`` of the model's objects reachable from a machine, for tests and fuzzers.

The model keeps an O(n) ``_check()`` on every stateful structure (frames, pins, address
spaces, io_pagetables, iopt_pages, type1 containers, VFIO devices, page tables, IOVA
domains, TCE tables). :func:`check_invariants` finds them by walking the object graph
from the machine (and from whatever else the caller holds: processes, files) instead of
naming each place, so a structure added later is checked without changing this module.
"""

from __future__ import annotations

import gc
import inspect
import types
from collections.abc import Callable, Iterable, Iterator

import numpy as np

__all__ = ["check_invariants", "reachable"]

#: What the walk never enters: code and classes lead to module globals (everything), an
#: array holds no objects of the model.
_OPAQUE = (type, types.ModuleType, types.BuiltinFunctionType, types.CodeType,
           types.FrameType, np.ndarray, np.generic)


def reachable(roots: Iterable[object]) -> Iterator[object]:
    """Each object reachable from ``roots`` once, depth first, through the references the
    garbage collector sees (instance dicts, containers, closures, bound methods), never
    through classes, modules or code. O(objects reached)."""
    seen: set[int] = set()
    stack = [r for r in roots if r is not None]
    tracked = gc.is_tracked
    while stack:
        obj = stack.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(obj, _OPAQUE):
            continue
        if isinstance(obj, types.FunctionType):  # only what it closes over, not its globals
            stack.extend(c.cell_contents for c in obj.__closure__ or ()
                         if _cell_full(c))
            continue
        if isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
            continue
        yield obj
        stack.extend(r for r in gc.get_referents(obj) if tracked(r))


def _cell_full(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


_CHECKERS: dict[type, Callable[[object], None] | None] = {}


def _checker(cls: type) -> Callable[[object], None] | None:
    """``cls._check`` when it takes no argument besides ``self`` (cached per class)."""
    if cls not in _CHECKERS:
        fn = getattr(cls, "_check", None)
        ok = False
        if inspect.isfunction(fn):
            params = list(inspect.signature(fn).parameters.values())[1:]
            ok = all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                     for p in params)
        _CHECKERS[cls] = fn if ok else None
    return _CHECKERS[cls]


def check_invariants(roots: Iterable[object]) -> int:
    """Call ``_check()`` on every object reachable from ``roots`` (a :class:`Machine`, its
    processes, files the caller kept) whose class has one taking no argument; an
    ``AssertionError`` from one propagates. Returns how many were checked. Cost: the
    walk plus the checks' own O(n) each."""
    n = 0
    for obj in reachable(roots):
        check = _checker(type(obj))
        if check is not None:
            check(obj)
            n += 1
    return n
