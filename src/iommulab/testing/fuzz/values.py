"""Argument values for the fuzzer: boundary integers, and ioctl structs described field by
field so a well-formed struct can be mutated where the kernel checks (size, flags,
reserved fields, ids, fds, pointers, lengths and IOVAs)."""

from __future__ import annotations

import random
import re
import struct
from dataclasses import dataclass

__all__ = ["U32", "U64", "Spec", "boundary", "fill_bytes", "spec"]

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
_SIZES = [0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFFFF, 0x200000, 1 << 30, 1 << 31, 1 << 32,
          1 << 45, 1 << 47, 0x7FFF_FFFF_F000, 1 << 63, U64 - 0xFFF, U64 - 1, U64]


def boundary(rng: random.Random, bits: int = 64) -> int:
    """An integer of ``bits`` bits where checks tend to break: a power of two or a
    neighbour, a page or huge-page size, a kernel limit, all ones, or random bits."""
    mask = (1 << bits) - 1
    r = rng.random()
    if r < 0.45:
        v = rng.choice(_SIZES)
    elif r < 0.8:
        v = (1 << rng.randrange(bits)) + rng.choice((-1, 0, 0, 1))
    else:
        v = rng.getrandbits(bits)
    return v & mask


def fill_bytes(rng: random.Random, n: int) -> bytes:
    """``n`` bytes: zeros, one repeated byte, or random."""
    r = rng.random()
    if r < 0.3:
        return bytes(n)
    if r < 0.7:
        return bytes([rng.randrange(256)]) * n
    return rng.randbytes(n)


_FMT = re.compile(r"(\d*)([a-zA-Z?])")


@dataclass(frozen=True)
class Spec:
    """One ioctl struct: the kernel's layout, a name per field and what each field is
    (``role``: size, flags, rsvd, id, fd, ptr, len, iova, or plain). ``out`` fields are
    written by the kernel. ``min_size`` is what the kernel requires of ``size``/``argsz``."""

    name: str
    request: int
    layout: struct.Struct
    names: tuple[str, ...]
    roles: tuple[str, ...]
    min_size: int

    def widths(self) -> list[tuple[str, int]]:
        """Each field's struct code and width in bits (bytes fields: their length * 8)."""
        out: list[tuple[str, int]] = []
        for count, code in _FMT.findall(self.layout.format.lstrip("<>=!@")):
            n = int(count) if count else 1
            if code == "x":
                continue
            if code == "s":
                out.append(("s", 8 * n))
            else:
                out.extend([(code, 8 * struct.calcsize(code))] * n)
        return out

    def pack(self, values: dict[str, int]) -> bytes:
        """The struct with ``values`` (missing fields 0), each cut to its field's width
        (signed fields wrap)."""
        packed: list[int | bytes] = []
        for name, (code, bits) in zip(self.names, self.widths(), strict=True):
            v = values.get(name, 0) & ((1 << bits) - 1)
            if code == "s":
                packed.append(v.to_bytes(bits // 8, "little"))
            elif code.islower() and code != "s" and v >> (bits - 1):
                packed.append(v - (1 << bits))
            else:
                packed.append(v)
        return self.layout.pack(*packed)

    def unpack(self, buf: bytes | bytearray) -> dict[str, int]:
        """The fields of ``buf`` (zero-filled to the struct's size) by name."""
        raw = bytes(buf[:self.layout.size]).ljust(self.layout.size, b"\0")
        vals = self.layout.unpack(raw)
        return {n: int.from_bytes(v, "little") if isinstance(v, bytes) else int(v)
                for n, v in zip(self.names, vals, strict=True)}

    def fields_with(self, role: str) -> list[str]:
        return [n for n, r in zip(self.names, self.roles, strict=True) if r == role]

    def bits(self, name: str) -> int:
        return self.widths()[self.names.index(name)][1]


def spec(name: str, request: int, layout: struct.Struct, fields: str, min_size: int = 0
         ) -> Spec:
    """A :class:`Spec` from ``"name:role name:role ..."`` (role omitted: plain)."""
    names, roles = [], []
    for item in fields.split():
        n, _, r = item.partition(":")
        names.append(n)
        roles.append(r or "plain")
    return Spec(name, request, layout, tuple(names), tuple(roles), min_size or layout.size)
