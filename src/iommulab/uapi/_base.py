"""What the two header modules share: the ``_IO`` request encoding of
``include/uapi/asm-generic/ioctl.h`` and a ctypes base with field helpers."""

from __future__ import annotations

import ctypes
from typing import Any, cast

__all__ = ["UapiStruct", "UapiUnion", "field_names", "ioc_io", "offsetofend"]

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
