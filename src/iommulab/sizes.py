"""Size constants (include/linux/sizes.h) and parsing of "64G"-style sizes."""

from __future__ import annotations

import re

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "SZ_1G",
    "SZ_1K",
    "SZ_1M",
    "SZ_1T",
    "SZ_2G",
    "SZ_2M",
    "SZ_4G",
    "SZ_4K",
    "SZ_8K",
    "SZ_16K",
    "SZ_32M",
    "SZ_64K",
    "SZ_256M",
    "SZ_512M",
    "parse_size",
]

SZ_1K = 1 << 10
SZ_4K = 1 << 12
SZ_8K = 1 << 13
SZ_16K = 1 << 14
SZ_64K = 1 << 16
SZ_1M = 1 << 20
SZ_2M = 1 << 21
SZ_32M = 1 << 25
SZ_256M = 1 << 28
SZ_512M = 1 << 29
SZ_1G = 1 << 30
SZ_2G = 1 << 31
SZ_4G = 1 << 32
SZ_1T = 1 << 40

#: The CPU page size the model assumes unless told otherwise (x86_64, arm64 4K kernels).
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

_UNITS = {"": 1, "K": SZ_1K, "M": SZ_1M, "G": SZ_1G, "T": SZ_1T, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-f]+|\d+)\s*([kmgtpe]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse ``"64G"``, ``"2MiB"``, ``"4k"``, ``"0x1000"`` or an int into bytes.

    Suffixes are binary (K = 1024), as in the kernel's ``memparse()``.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative, not {text}")
        return text
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"cannot parse size {text!r}: expected e.g. '64G', '2M', '4096', '0x1000'")
    number, unit = m.groups()
    value = int(number, 16) if number.lower().startswith("0x") else int(number)
    return value * _UNITS[unit.upper()]
