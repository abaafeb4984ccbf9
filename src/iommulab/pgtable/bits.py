"""Descriptor fields declared once, as data (inclusive ``(hi, lo)`` ranges).

A :class:`Layout` is the bit table of one descriptor kind, copied from the
spec; it drives encode, decode, the pretty-printer and the golden tests, the
way the kernel's ``GENMASK`` constants do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Field", "Layout", "genmask"]


def genmask(hi: int, lo: int) -> int:
    """``GENMASK_ULL(hi, lo)``."""
    return ((1 << (hi - lo + 1)) - 1) << lo


@dataclass(frozen=True)
class Field:
    """Bits ``hi:lo`` of a descriptor; ``doc`` says what they mean."""

    name: str
    hi: int
    lo: int
    doc: str = ""
    address: bool = False  # holds address bits in place: decode keeps them unshifted

    @property
    def mask(self) -> int:
        return genmask(self.hi, self.lo)

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    def get(self, value: int) -> int:
        if self.address:
            return value & self.mask
        return (value >> self.lo) & ((1 << self.width) - 1)

    def put(self, field_value: int) -> int:
        if self.address:
            if field_value & ~self.mask:
                raise ValueError(f"{self.name}: {field_value:#x} has bits outside "
                                 f"{self.hi}:{self.lo}")
            return field_value
        if field_value >> self.width:
            raise ValueError(f"{self.name}: {field_value:#x} does not fit in bits "
                             f"{self.hi}:{self.lo}")
        return field_value << self.lo


class Layout:
    """An ordered set of non-overlapping fields of one 64-bit descriptor."""

    def __init__(self, name: str, fields: tuple[Field, ...]) -> None:
        self.name = name
        self.fields = fields
        self._by_name = {f.name: f for f in fields}
        used = 0
        for f in fields:
            if used & f.mask:
                raise ValueError(f"{name}: field {f.name} overlaps another field")
            used |= f.mask

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def encode(self, **values: int) -> int:
        out = 0
        for name, v in values.items():
            out |= self._by_name[name].put(v)
        return out

    def decode(self, value: int) -> dict[str, int]:
        """Field values; bits outside every field are reported as ``"RES"``."""
        out = {f.name: f.get(value) for f in self.fields}
        covered = 0
        for f in self.fields:
            covered |= f.mask
        if value & ~covered:
            out["RES"] = value & ~covered & ((1 << 64) - 1)
        return out

    def describe(self, value: int, only_set: bool = True) -> str:
        """``"TYPE=3 AF=1 OA=0x80000"``: the fields, for people and reprs."""
        parts = []
        for name, v in self.decode(value).items():
            if v or not only_set:
                parts.append(f"{name}={v:#x}" if v > 9 else f"{name}={v}")
        return " ".join(parts) or "0"
