"""The Linux version a machine answers as.

Where Linux 6.12 and 7.0 differ in what a user can observe (an errno, a field written
back, an ioctl that exists or not, a page-table entry), the model keeps both and picks by
the machine's :class:`KernelVersion`. Checks are written against the release that
changed the behaviour (``kernel >= (6, 13)``), so each branch names its boundary; only
the versions in :data:`KERNEL_VERSIONS` are modelled and checked.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_KERNEL", "KERNEL_VERSIONS", "LINUX_6_12", "LINUX_7_0", "KernelVersion"]


@dataclass(frozen=True)
class KernelVersion:
    """A Linux release, ``major.minor``; compares with another or with a ``(major, minor)``
    tuple."""

    major: int
    minor: int

    @classmethod
    def parse(cls, value: KernelVersion | str) -> KernelVersion:
        """``"6.12"`` or ``"7.0"`` (a :class:`KernelVersion` passes through); ValueError
        naming the value for any other."""
        if isinstance(value, KernelVersion):
            version = value
        else:
            major, dot, minor = str(value).partition(".")
            if not (dot and major.isdigit() and minor.isdigit()):
                raise ValueError(f"kernel {value!r}: want one of {', '.join(KERNEL_VERSIONS)}")
            version = cls(int(major), int(minor))
        if str(version) not in KERNEL_VERSIONS:
            raise ValueError(f"kernel {value!r}: the model answers as "
                             f"{' or '.join(KERNEL_VERSIONS)}")
        return version

    def _key(self, other: object) -> tuple[int, int]:
        if isinstance(other, KernelVersion):
            return (other.major, other.minor)
        if isinstance(other, tuple) and len(other) == 2:
            return (int(other[0]), int(other[1]))
        raise TypeError(f"cannot compare a KernelVersion with {other!r}")

    def __ge__(self, other: object) -> bool:
        return (self.major, self.minor) >= self._key(other)

    def __lt__(self, other: object) -> bool:
        return (self.major, self.minor) < self._key(other)

    def __gt__(self, other: object) -> bool:
        return (self.major, self.minor) > self._key(other)

    def __le__(self, other: object) -> bool:
        return (self.major, self.minor) <= self._key(other)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


#: The versions the model answers as.
KERNEL_VERSIONS = ("6.12", "7.0")
LINUX_6_12 = KernelVersion(6, 12)
LINUX_7_0 = KernelVersion(7, 0)
#: What a machine answers as unless told otherwise: the kernel the recorded real-kernel
#: answers (``tests/oracle/``) come from.
DEFAULT_KERNEL = LINUX_6_12
