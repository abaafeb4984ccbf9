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


#: per header, the names to leave out (None: the header is not there at all)
Skips = dict[str, "set[str] | frozenset[str] | None"]


def absent(mod: ModuleType, text: str) -> set[str]:
    """The module's structs, ``struct.member``s and constants the header ``text`` lacks."""
    out: set[str] = set()
    for struct in structs(mod):
        s = struct.__name__
        body = re.search(rf"struct {s} \{{(.*?)\n}};", text, re.S)
        if body is None:
            out.add(s)
            continue
        out |= {f"{s}.{m}" for m in field_names(struct)
                if not re.search(rf"\b{m}\b", body.group(1))}
    out |= {name for name in constants(mod) if not re.search(rf"\b{name}\b", text)}
    return out


def expected(skips: Skips) -> dict[str, int]:
    """What the C program must print: ``key value`` for every struct, member and constant
    the headers have."""
    out: dict[str, int] = {}
    for header, mod in MODULES.items():
        skip = skips[header]
        if skip is None:
            continue
        for struct in structs(mod):
            s = struct.__name__
            if s in skip:
                continue
            members = [m for m in field_names(struct) if f"{s}.{m}" not in skip]
            added = [m for m in field_names(struct) if f"{s}.{m}" in skip]
            old_end = max(offsetofend(struct, m) for m in members)
            tail = [getattr(struct, m).offset for m in added
                    if getattr(struct, m).offset >= old_end]
            # an older struct ends where its first later-added tail member starts, rounded
            # up to the alignment of the members it has
            align = max(ctypes.alignment(_member_type(struct, m)) for m in members)
            out[f"sizeof:{s}"] = -(-min(tail) // align) * align if tail \
                else ctypes.sizeof(struct)
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


def c_program(skips: Skips) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += [f"#include <{h}>" for h, skip in skips.items() if skip is not None]
    lines += ["int main(void) {"]

    def emit(key: str, expr: str) -> None:
        lines.append(f'  printf("%s %lld\\n", "{key}", (long long)({expr}));')

    for header, mod in MODULES.items():
        skip = skips[header]
        if skip is None:
            continue
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


def compile_and_run(include: Path | None, tmp: Path, skips: Skips) -> dict[str, int]:
    """Build and run the program against ``include`` (None: the system's headers)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to read the headers with")
    src = tmp / "layout.c"
    src.write_text(c_program(skips))
    exe = tmp / "layout"
    inc = ["-isystem", str(include)] if include is not None else []
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", *inc, str(src), "-o",
                            str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, f"the headers lack what the module names:\n{build.stderr}"
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def check(include: Path | None, tmp: Path, skips: Skips) -> None:
    got = compile_and_run(include, tmp, skips)
    want = expected(skips)
    assert got.keys() == want.keys()
    wrong = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not wrong, f"module value, header value: {wrong}"


@pytest.fixture(scope="module")
def uapi_612(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        top = kselftest.find_source()
    except FileNotFoundError as e:
        pytest.skip(f"no Linux 6.12 source for the uapi headers: {e}")
    return kselftest.install_headers(top, tmp_path_factory.mktemp("uapi-6.12"))


def test_layout_matches_6_12_header(uapi_612: Path, tmp_path: Path) -> None:
    check(uapi_612, tmp_path, {h: m.NOT_IN_6_12 for h, m in MODULES.items()})


def test_not_in_6_12_lists_exactly_what_6_12_lacks(uapi_612: Path) -> None:
    """``NOT_IN_6_12`` is what the 6.12 header text lacks, no more and no less."""
    for header, mod in MODULES.items():
        assert absent(mod, (uapi_612 / header).read_text()) == set(mod.NOT_IN_6_12), header


SYSTEM = Path("/usr/include")


@pytest.mark.skipif(not (SYSTEM / "linux/vfio.h").is_file(),
                    reason="no linux/vfio.h from linux-libc-dev in /usr/include")
def test_layout_matches_the_system_headers(tmp_path: Path) -> None:
    """Against the distribution's own headers (Debian's ``linux-libc-dev``; bookworm's is
    6.1, without iommufd.h): whatever they declare of the module must agree."""
    skips: Skips = {h: (absent(m, (SYSTEM / h).read_text()) if (SYSTEM / h).is_file()
                        else None) for h, m in MODULES.items()}
    check(None, tmp_path, skips)


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
    check(inc, tmp_path, {h: set() for h in MODULES})


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


def test_sized_fills_the_size_member() -> None:
    cmd = iommufd.iommu_ioas_map.sized(ioas_id=3, length=4096)
    assert (cmd.size, cmd.ioas_id, cmd.length, cmd.iova) == (40, 3, 4096, 0)
    assert vfio.vfio_iommu_type1_dma_map.sized(size=8).argsz == 32
    assert iommufd.iommu_ioas_map.from_buffer_copy(bytes(cmd)) == cmd
    with pytest.raises(TypeError):
        vfio.vfio_iova_range.sized()


#: The 7.0-only vIOMMU structs as the newer header declares them (include/uapi/linux/
#: iommufd.h of mainline after 6.16, read from the public tree; see docs/design/nesting.md
#: "7.0 vIOMMU facts"): size, then (member, offset) in order. Golden values from the
#: header text, since the 6.12 tree the C check compiles against lacks them.
VIOMMU_LAYOUTS_7_0: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {
    "iommu_viommu_alloc": (40, (("size", 0), ("flags", 4), ("type", 8), ("dev_id", 12),
                                ("hwpt_id", 16), ("out_viommu_id", 20), ("data_len", 24),
                                ("__reserved", 28), ("data_uptr", 32))),
    "iommu_vdevice_alloc": (24, (("size", 0), ("viommu_id", 4), ("dev_id", 8),
                                 ("out_vdevice_id", 12), ("virt_id", 16))),
    "iommu_veventq_alloc": (32, (("size", 0), ("flags", 4), ("viommu_id", 8), ("type", 12),
                                 ("veventq_depth", 16), ("out_veventq_id", 20),
                                 ("out_veventq_fd", 24), ("__reserved", 28))),
    "iommufd_vevent_header": (8, (("flags", 0), ("sequence", 4))),
    "iommu_hwpt_arm_smmuv3": (16, (("ste", 0),)),
    "iommu_viommu_arm_smmuv3_invalidate": (16, (("cmd", 0),)),
    "iommu_vevent_arm_smmuv3": (32, (("evt", 0),)),
}


@pytest.mark.parametrize("name", sorted(VIOMMU_LAYOUTS_7_0))
def test_viommu_structs_match_the_7_0_header(name: str) -> None:
    """Each 7.0 vIOMMU struct has the header's size, members and offsets, and is listed
    as absent from 6.12."""
    size, members = VIOMMU_LAYOUTS_7_0[name]
    struct = getattr(iommufd, name)
    assert name in iommufd.NOT_IN_6_12
    assert ctypes.sizeof(struct) == size
    layout = [(m, getattr(struct, m).offset) for m, *_ in struct._fields_]
    assert tuple(layout) == members
