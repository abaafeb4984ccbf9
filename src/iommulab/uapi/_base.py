"""What the two header modules share: the ``_IO`` request encoding of
``include/uapi/asm-generic/ioctl.h`` and a ctypes base with field helpers."""

from __future__ import annotations

import ctypes
import struct
from typing import Any, cast

__all__ = ["UapiStruct", "UapiUnion", "field_names", "ioc_io", "offsetofend", "struct_layout"]

# include/uapi/asm-generic/ioctl.h (x86_64 uses the generic encoding)
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS


def ioc_io(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no direction or size bits (every vfio and iommufd request)."""
    return (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)


def field_names(cls: type[ctypes.Structure | ctypes.Union]) -> list[str]:
    """The C-visible member names of ``cls`` in declaration order; the members of an
    anonymous union stand in for the union itself, as in C."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    out: list[str] = []
    for name, ftype, *_ in cls._fields_:
        if name in anonymous and issubclass(ftype, ctypes.Structure | ctypes.Union):
            out.extend(field_names(ftype))
        else:
            out.append(name)
    return out


def offsetofend(cls: type[ctypes.Structure], field: str) -> int:
    """``offsetofend(struct, field)`` (include/linux/stddef.h): the kernel's
    ``minsz`` for a struct whose last mandatory member is ``field``."""
    desc = getattr(cls, field)
    return int(desc.offset) + int(desc.size)


#: ``struct`` codes of the scalar ctypes the headers' types map to (``__u64`` is a C
#: ``unsigned long`` on x86_64, whose ctypes code ``L`` means 4 bytes to ``struct``'s ``<``).
_CODES: dict[Any, str] = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I",
                          ctypes.c_int32: "i", ctypes.c_uint64: "Q"}


def _code(ftype: Any) -> str:
    """The ``struct`` format of one member: nested structs flattened, a union as its first
    member, ``__u8`` arrays as ``bytes``, other arrays as that many items."""
    if issubclass(ftype, ctypes.Array):
        n, elem = int(ftype._length_), ftype._type_
        if n == 0:
            return ""
        return f"{n}s" if elem is ctypes.c_uint8 else _code(elem) * n
    if issubclass(ftype, ctypes.Union):
        first = ftype._fields_[0][1]
        if ctypes.sizeof(first) != ctypes.sizeof(ftype):
            raise TypeError(f"{ftype.__name__}: members of different sizes")
        return _code(first)
    if issubclass(ftype, ctypes.Structure):
        return struct_layout(ftype).format[1:]
    return _CODES[ftype]


def struct_layout(cls: type[ctypes.Structure], upto: str | None = None) -> struct.Struct:
    """``cls`` as a little-endian ``struct.Struct`` (C padding as pad bytes, which unpack
    to nothing), whole or, with ``upto``, ending at that member (``offsetofend``), as an
    older release's shorter struct. Flexible array members take no room."""
    fmt, pos = "<", 0
    for name, ftype, *_ in cls._fields_:
        off = int(getattr(cls, name).offset)
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += _code(ftype)
        pos = off + ctypes.sizeof(ftype)
        if upto is not None and upto in (name, *field_names_of(ftype)):
            return struct.Struct(fmt)
    if upto is not None:
        raise KeyError(f"{cls.__name__} has no member {upto}")
    if ctypes.sizeof(cls) > pos:
        fmt += f"{ctypes.sizeof(cls) - pos}x"
    return struct.Struct(fmt)


def field_names_of(ftype: Any) -> list[str]:
    """The members of an anonymous union or struct type, none for a scalar or array."""
    if issubclass(ftype, ctypes.Structure | ctypes.Union):
        return field_names(ftype)
    return []


class _Repr:
    def __repr__(self) -> str:
        parts = []
        for name in field_names(type(self)):  # type: ignore[arg-type]
            value = getattr(self, name)
            if isinstance(value, ctypes.Array):
                value = list(value)
            parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __eq__(self, other: Any) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bytes(cast(Any, self)) == bytes(cast(Any, other))

    __hash__ = None  # type: ignore[assignment]  # mutable, as ctypes objects are


class UapiStruct(_Repr, ctypes.Structure):
    """A ctypes ``Structure`` laid out as the x86_64 C compiler lays out the header's
    struct (natural alignment; ``__aligned_u64`` is 8-aligned there as ``__u64`` is).

    ``bytes(s)`` is the argument for ``fcntl.ioctl``; ``cls.from_buffer_copy(b)`` reads
    one back; :func:`offsetofend` gives a ``minsz``."""


class UapiUnion(_Repr, ctypes.Union):
    """A ctypes ``Union`` of a header's anonymous union."""
