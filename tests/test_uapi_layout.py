"""The typed uAPI (:mod:`iommulab.uapi`) against the header text, as the C compiler reads it.

A C program generated from the ctypes classes includes ``linux/vfio.h`` and
``linux/iommufd.h`` (the 6.12 tree's ``include/uapi``, installed as ``make headers``
does, see :func:`iommulab.testing.kselftest.install_headers`) and prints, for every struct,
its ``sizeof``; for every member its ``offsetof``, its size (a flexible array's element
size) and whether its C type is the one the ctypes field stands for; and every constant's
value. Each must equal the module's. The names a module lists in ``NOT_IN_6_12`` must be
absent from the 6.12 header text and are left out; with ``IOMMULAB_UAPI_INCLUDE`` naming
a newer ``include/uapi`` directory (7.0's), they are checked as well.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iommulab.iommufd import uapi as internal_iommufd
from iommulab.testing import kselftest
from iommulab.uapi import UapiStruct, field_names, iommufd, offsetofend, struct_layout, vfio
from iommulab.vfio import uapi as internal_vfio

MODULES = {"linux/vfio.h": vfio, "linux/iommufd.h": iommufd}

#: the header's integer types, for each ctypes type the modules use
C_TYPES: dict[type, str] = {ctypes.c_uint8: "__u8", ctypes.c_uint16: "__u16",
                            ctypes.c_uint32: "__u32", ctypes.c_int32: "__s32",
                            ctypes.c_uint64: "__u64"}


def constants(mod: ModuleType) -> dict[str, int]:
    """The module's header constants: upper-case names bound to ints."""
    return {name: value for name, value in vars(mod).items()
            if re.fullmatch(r"_*[A-Z][A-Za-z0-9_]*", name) and type(value) is int}


def structs(mod: ModuleType) -> list[type[UapiStruct]]:
    return list(mod.STRUCTS)


def c_type(struct: type[UapiStruct], name: str, pointers: frozenset[str]) -> str:
    """The C type the ctypes member ``name`` stands for (an array's element type)."""
    if f"{struct.__name__}.{name}" in pointers:
        return "__u64 *"
    ftype: Any = _member_type(struct, name)
    while issubclass(ftype, ctypes.Array):
        ftype = ftype._type_
    if issubclass(ftype, UapiStruct):
        return f"struct {ftype.__name__}"
    return C_TYPES[ftype]


def _member_type(cls: Any, name: str) -> Any:
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for fname, ftype, *_ in cls._fields_:
        if fname == name:
            return ftype
        if fname in anonymous and name in field_names(ftype):
            return _member_type(ftype, name)
    raise KeyError(name)


def is_array(struct: type[UapiStruct], name: str) -> bool:
    return issubclass(_member_type(struct, name), ctypes.Array)


def is_flexible(struct: type[UapiStruct], name: str) -> bool:
    ftype = _member_type(struct, name)
    return issubclass(ftype, ctypes.Array) and int(ftype._length_) == 0


def expected(newer: bool) -> dict[str, int]:
    """What the C program must print: ``key value`` for every struct, member and constant
    the header version has."""
    out: dict[str, int] = {}
    for mod in MODULES.values():
        skip = set() if newer else mod.NOT_IN_6_12
        for struct in structs(mod):
            s = struct.__name__
            if s in skip:
                continue
            members = [m for m in field_names(struct) if f"{s}.{m}" not in skip]
            added = [m for m in field_names(struct) if f"{s}.{m}" in skip]
            old_end = max(offsetofend(struct, m) for m in members)
            tail = [getattr(struct, m).offset for m in added
                    if getattr(struct, m).offset >= old_end]
            out[f"sizeof:{s}"] = min(tail) if tail else ctypes.sizeof(struct)
            for m in members:
                desc = getattr(struct, m)
                out[f"offsetof:{s}.{m}"] = desc.offset
                if is_flexible(struct, m):
                    out[f"elemsize:{s}.{m}"] = ctypes.sizeof(_member_type(struct, m)._type_)
                else:
                    out[f"sizeof:{s}.{m}"] = desc.size
                out[f"type:{s}.{m}"] = 1
        for name, value in constants(mod).items():
            if name not in skip:
                out[f"const:{name}"] = value
    return out


def c_program(newer: bool) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vfio.h>",
             "#include <linux/iommufd.h>", "int main(void) {"]

    def emit(key: str, expr: str) -> None:
        lines.append(f'  printf("%s %lld\\n", "{key}", (long long)({expr}));')

    for mod in MODULES.values():
        skip = set() if newer else mod.NOT_IN_6_12
        for struct in structs(mod):
            s = struct.__name__
            if s in skip:
                continue
            emit(f"sizeof:{s}", f"sizeof(struct {s})")
            for m in field_names(struct):
                if f"{s}.{m}" in skip:
                    continue
                member = f"((struct {s} *)0)->{m}"
                emit(f"offsetof:{s}.{m}", f"offsetof(struct {s}, {m})")
                if is_flexible(struct, m):
                    emit(f"elemsize:{s}.{m}", f"sizeof({member}[0])")
                else:
                    emit(f"sizeof:{s}.{m}", f"sizeof({member})")
                elem = f"{member}[0]" if is_array(struct, m) else member
                emit(f"type:{s}.{m}", "__builtin_types_compatible_p(__typeof__("
                     f"{elem}), {c_type(struct, m, mod.USER_POINTERS)})")
        for name in constants(mod):
            if name not in skip:
                emit(f"const:{name}", name)
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def compile_and_run(include: Path, tmp: Path, newer: bool) -> dict[str, int]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to read the headers with")
    src = tmp / "layout.c"
    src.write_text(c_program(newer))
    exe = tmp / "layout"
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-isystem", str(include),
                            str(src), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, f"the headers lack what the module names:\n{build.stderr}"
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.fixture(scope="module")
def uapi_612(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        top = kselftest.find_source()
    except FileNotFoundError as e:
        pytest.skip(f"no Linux 6.12 source for the uapi headers: {e}")
    return kselftest.install_headers(top, tmp_path_factory.mktemp("uapi-6.12"))


def test_layout_matches_6_12_header(uapi_612: Path, tmp_path: Path) -> None:
    got = compile_and_run(uapi_612, tmp_path, newer=False)
    want = expected(newer=False)
    assert got.keys() == want.keys()
    wrong = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not wrong, f"module value, header value: {wrong}"


def test_newer_names_are_absent_from_6_12(uapi_612: Path) -> None:
    """``NOT_IN_6_12`` is true: each name is missing from the 6.12 header text."""
    for header, mod in MODULES.items():
        text = (uapi_612 / header).read_text()
        for name in mod.NOT_IN_6_12:
            struct, _, member = name.partition(".")
            body = re.search(rf"struct {struct} \{{(.*?)\n}};", text, re.S)
            if member:
                assert body is not None, f"{struct} is missing from {header}"
                assert not re.search(rf"\b{member}\b", body.group(1)), name
            else:
                assert body is None and not re.search(rf"\b{name}\b", text), name


@pytest.mark.skipif(not os.environ.get("IOMMULAB_UAPI_INCLUDE"),
                    reason="IOMMULAB_UAPI_INCLUDE names no newer (7.0) include/uapi")
def test_layout_matches_newer_header(tmp_path: Path) -> None:
    top = Path(os.environ["IOMMULAB_UAPI_INCLUDE"])
    inc = tmp_path / "usr" / "include"
    (inc / "linux").mkdir(parents=True)
    for header in MODULES:  # install as make headers does, without the 6.12 tree
        text = (top / header).read_text()
        for pattern, repl in kselftest._HEADERS_INSTALL:
            text = pattern.sub(repl, text)
        (inc / header).write_text(text)
    got = compile_and_run(inc, tmp_path, newer=True)
    want = expected(newer=True)
    assert got.keys() == want.keys()
    wrong = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not wrong, f"module value, header value: {wrong}"


@pytest.mark.parametrize("mod", [vfio, iommufd], ids=["vfio", "iommufd"])
def test_every_struct_is_listed(mod: ModuleType) -> None:
    """``STRUCTS`` holds every struct class the module defines, so none goes unchecked."""
    defined = {v for v in vars(mod).values()
               if isinstance(v, type) and issubclass(v, UapiStruct) and v is not UapiStruct}
    assert defined == set(mod.STRUCTS)


def _flat(obj: Any) -> list[Any]:
    """A ctypes value's members in ``struct_layout`` order: nested structs flattened, a
    union as its first member, ``__u8`` arrays as bytes, other arrays item by item."""
    if isinstance(obj, int):
        return [obj]
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_uint8:
            return [bytes(obj)] if len(obj) else []
        return [v for item in obj for v in _flat(item)]
    if isinstance(obj, ctypes.Union):
        return _flat(getattr(obj, obj._fields_[0][0]))
    return [v for name, *_ in obj._fields_ for v in _flat(getattr(obj, name))]


def test_struct_layout_matches_ctypes() -> None:
    """:func:`struct_layout` (what the model's handlers unpack with) puts each member
    where ctypes (checked against the header above) has it: distinct values packed by
    position read back from the same members of the ctypes struct."""
    for mod in MODULES.values():
        for struct in structs(mod):
            layout = struct_layout(struct)
            assert layout.size == ctypes.sizeof(struct), struct.__name__
            values = [bytes(range(n + 1, n + 1 + len(item))) if isinstance(item, bytes)
                      else n + 1 for n, item in enumerate(layout.unpack(bytes(layout.size)))]
            packed = layout.pack(*values)
            assert _flat(struct.from_buffer_copy(packed)) == values, struct.__name__


def test_shorter_layouts_end_at_the_member() -> None:
    assert struct_layout(vfio.vfio_device_bind_iommufd, "out_devid").size == 16
    assert struct_layout(iommufd.iommu_hw_info, "out_data_type").size == 28
    with pytest.raises(KeyError):
        struct_layout(vfio.vfio_group_status, "nope")


def test_internal_tables_use_the_typed_module() -> None:
    """The model's request numbers are the typed module's objects (defined once) and its
    layouts are derived from the typed structs."""
    assert internal_iommufd.IOMMU_IOAS_MAP is iommufd.IOMMU_IOAS_MAP
    assert internal_vfio.VFIO_IOMMU_MAP_DMA is vfio.VFIO_IOMMU_MAP_DMA
    for cmd in internal_iommufd.COMMANDS.values():
        assert cmd.request == getattr(iommufd, cmd.name)
        typed = getattr(iommufd, "iommu_" + cmd.name.removeprefix("IOMMU_").lower(), None)
        if typed is not None:
            assert cmd.layout.size == ctypes.sizeof(typed), cmd.name
            assert cmd.min_size <= cmd.layout.size
    derived = struct_layout(vfio.vfio_iommu_type1_dma_map)
    assert derived.format == internal_vfio.DMA_MAP.format
    minsz = offsetofend(vfio.vfio_iommu_type1_info, "iova_pgsizes")
    assert minsz == internal_vfio.IOMMU_INFO_MINSZ == 16
