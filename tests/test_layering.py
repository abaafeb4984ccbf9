"""The layering of the syscall surface (issue 20): the front ends (VFIO, iommufd's files,
the exec bridge) reach the machine only through :mod:`iommulab.syscall`, the machine
imports none of them, and no two modules of the package import each other at load time.

Imports are read from the source with :mod:`ast`, wherever they are: at module level,
under ``if TYPE_CHECKING:`` or inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "iommulab"

#: where an import statement sits
MODULE, TYPE_CHECKING, FUNCTION = "module", "type-checking", "function"


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py")}

#: the front ends: every VFIO module, iommufd's files and the exec bridge's model side
FRONT_ENDS = sorted(
    m for m in MODULES
    if m.startswith(("iommulab.vfio.", "iommulab.exec."))
    or m in ("iommulab.vfio", "iommulab.exec", "iommulab.iommufd.file",
             "iommulab.iommufd.selftest", "iommulab.iommufd.vfio_compat"))
#: what assembles the front ends (imports them all)
ASSEMBLY = "iommulab.frontends"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, where: str = MODULE) -> Iterator[tuple[ast.stmt, str]]:
    """Every import statement of ``tree`` and where it sits."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, where
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _statements(node, FUNCTION)
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and where == MODULE:
            for stmt in node.body:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), TYPE_CHECKING)
            for stmt in node.orelse:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), where)
        else:
            yield from _statements(node, where)


def imports(module: str, source: str, *, is_package: bool = False
            ) -> list[tuple[str, str, bool]]:
    """(module loaded, where the statement sits, named explicitly) for each iommulab
    module an import statement of ``module`` loads: the module it names, the package
    inits above it (not those ``module`` is part of: they are loading already, but the
    root package named explicitly, which re-exports the machine), and for ``from X
    import n`` the submodule ``X.n`` when there is one."""
    package = module if is_package else module.rpartition(".")[0]
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    own |= {package} if not is_package else set()
    found: list[tuple[str, str, bool]] = []
    for stmt, where in _statements(ast.parse(source)):
        named: list[str] = []
        if isinstance(stmt, ast.Import):
            named = [alias.name for alias in stmt.names]
        else:
            assert isinstance(stmt, ast.ImportFrom)
            base = stmt.module or ""
            if stmt.level:
                up = package.split(".")[:len(package.split(".")) - (stmt.level - 1)]
                base = ".".join(up + ([base] if base else []))
            named = [base] + [f"{base}.{alias.name}" for alias in stmt.names]
        for name in named:
            if name != "iommulab" and not name.startswith("iommulab."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                explicit = i == len(parts)
                if target in own and target != "iommulab":
                    continue  # a package this module is part of: loading already
                if target in MODULES or (explicit and target == "iommulab"):
                    found.append((target, where, explicit))
    return found


def _imports_of(module: str) -> list[tuple[str, str, bool]]:
    path = MODULES[module]
    return imports(module, path.read_text(), is_package=path.name == "__init__.py")


def _load_graph() -> dict[str, set[str]]:
    """module -> the modules its module-level imports load (what runs at import)."""
    return {m: {t for t, where, _ in _imports_of(m)
                if where == MODULE and t not in (m, "iommulab")} for m in MODULES}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for t in graph[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_reader_finds_every_kind_of_import() -> None:
    """The checker itself: module-level, TYPE_CHECKING and function-level imports, the
    root package's re-exports and relative imports are all seen."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..machine import Machine\n"
        "from . import uapi\n"
        "if TYPE_CHECKING:\n"
        "    from ..syscall.process import Process\n"
        "def f():\n"
        "    from iommulab import Machine\n"
        "class C:\n"
        "    def g(self):\n"
        "        import iommulab.vfio.files\n")
    found = imports("iommulab.vfio.cdev", source)
    assert ("iommulab.machine", MODULE, True) in found
    assert ("iommulab.vfio.uapi", MODULE, True) in found
    assert ("iommulab.syscall", TYPE_CHECKING, False) in found
    assert ("iommulab.syscall.process", TYPE_CHECKING, True) in found
    assert ("iommulab", FUNCTION, True) in found
    assert ("iommulab.vfio.files", FUNCTION, True) in found
    assert ("iommulab.vfio", MODULE, False) not in found  # cdev's own package
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_front_ends_are_known() -> None:
    for m in ("iommulab.vfio.files", "iommulab.vfio.cdev", "iommulab.vfio.device",
              "iommulab.iommufd.file", "iommulab.iommufd.selftest",
              "iommulab.iommufd.vfio_compat", "iommulab.exec.handler", "iommulab.exec.run"):
        assert m in FRONT_ENDS


@pytest.mark.parametrize("module", FRONT_ENDS)
def test_front_end_does_not_import_the_machine(module: str) -> None:
    """Not at module level, not under TYPE_CHECKING, not inside a function; not through
    the root package's re-export either."""
    bad = [(t, where) for t, where, explicit in _imports_of(module)
           if t == "iommulab.machine" or (t == "iommulab" and explicit)]
    assert not bad, f"{module} imports the machine: {bad}"


def test_machine_imports_no_front_end() -> None:
    """machine.py names no front end anywhere, and what it loads does not either."""
    bad = [(t, where) for t, where, _ in _imports_of("iommulab.machine")
           if t in FRONT_ENDS or t == ASSEMBLY]
    assert not bad, f"iommulab.machine imports front ends: {bad}"
    loaded = _closure(_load_graph(), "iommulab.machine")
    assert not loaded & {*FRONT_ENDS, ASSEMBLY}, sorted(loaded & {*FRONT_ENDS, ASSEMBLY})


def test_syscall_layer_loads_no_front_end_and_no_machine() -> None:
    """The layer is below both: loading it loads neither the machine nor a front end
    (its type annotations may name them)."""
    graph = _load_graph()
    for m in MODULES:
        if m == "iommulab.syscall" or m.startswith("iommulab.syscall."):
            loaded = _closure(graph, m)
            bad = loaded & {*FRONT_ENDS, ASSEMBLY, "iommulab.machine"}
            assert not bad, f"{m} loads {sorted(bad)}"
            assert all(where != FUNCTION for t, where, _ in _imports_of(m)
                       if t in {*FRONT_ENDS, ASSEMBLY, "iommulab.machine"}), m


def test_no_import_cycle_at_load_time() -> None:
    """No iommulab modules import one another in a circle at module level (imports under
    TYPE_CHECKING and inside functions run later and are left out)."""
    assert _cycles(_load_graph()) == []


def test_device_files_are_registered() -> None:
    """The assembly point registered every path the front ends serve, and both doors
    resolve through the same table."""
    import iommulab  # noqa: F401  (registers)
    from iommulab.machine import Machine
    from iommulab.syscall import DEVICE_FILES

    m = Machine("x86-vtd")
    dev = m.add_pci_device("0000:00:01.0")
    for path in ("/dev/iommu", "/dev/vfio/vfio", f"/dev/vfio/{dev.iommu_group}",
                 "/dev/vfio/devices/vfio0"):
        node = DEVICE_FILES.lookup(m, path)
        assert node is not None and not node.is_dir, path
    assert DEVICE_FILES.lookup(m, "/dev/vfio/devices/vfio1") is None
    assert DEVICE_FILES.lookup(m, f"/dev/vfio/0{dev.iommu_group}") is None
    assert {"/dev/vfio", "/dev/vfio/devices"} == DEVICE_FILES.directories()


def test_both_doors_resolve_through_the_table() -> None:
    """The exec handler shows the table's nodes; the process opens the registration the
    machine's kconfig selects for ``/dev/vfio/vfio``; ppc64-pseries serves none."""
    import errno
    import os
    import stat

    from iommulab.exec.handler import ModelHandler
    from iommulab.iommufd.file import IommufdFile
    from iommulab.machine import Machine
    from iommulab.syscall import DEVICE_FILES
    from iommulab.vfio.files import Container

    m = Machine("x86-vtd")
    m.add_pci_device("0000:00:01.0")
    h = ModelHandler(m)
    for path in ("/dev/iommu", "/dev/vfio/vfio", "/dev/vfio", "/dev/vfio/devices",
                 "/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1", "/dev/nope"):
        node, shown = DEVICE_FILES.lookup(m, path), h.lookup(path)
        assert (node is None) == (shown is None), path
        if node is not None and shown is not None:
            assert shown.mode == node.mode, path
            if stat.S_ISCHR(node.mode):
                assert shown.rdev == os.makedev(node.major, node.minor), path
    p = m.spawn_process()
    assert isinstance(p.files[p.open("/dev/vfio/vfio")], Container)
    m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = True
    assert isinstance(p.files[p.open("/dev/vfio/vfio")], IommufdFile)
    with pytest.raises(OSError) as e:
        p.open("/dev/vfio/devices/vfio1")
    assert e.value.errno == errno.ENOENT
    p.exit()

    ppc = Machine("ppc64-pseries")
    assert ModelHandler(ppc).lookup("/dev/iommu") is None
    q = ppc.spawn_process()
    with pytest.raises(OSError) as e:
        q.open("/dev/iommu")
    assert e.value.errno == errno.ENODEV and not q.files
    q.exit()
