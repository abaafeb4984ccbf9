"""A real process's mappings as ``/proc/PID/smaps`` lists them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RealVma", "parse_smaps", "read_maps", "read_smaps"]


@dataclass(frozen=True)
class RealVma:
    """One line of ``/proc/PID/maps`` with what ``smaps`` adds about its pages."""

    start: int
    end: int
    perms: str  # "rw-p"
    offset: int  # bytes into the file
    dev: tuple[int, int]  # major, minor of the file's device
    inode: int
    path: str
    page_size: int = 4096  # KernelPageSize: 2M or 1G for hugetlb
    thp_eligible: bool = False

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


def _header(line: str) -> RealVma | None:
    parts = line.split(maxsplit=5)
    if len(parts) < 5 or "-" not in parts[0]:
        return None
    lo, _, hi = parts[0].partition("-")
    try:
        start, end = int(lo, 16), int(hi, 16)
        major, _, minor = parts[3].partition(":")
        dev = (int(major, 16), int(minor, 16))
        return RealVma(start, end, parts[1], int(parts[2], 16), dev, int(parts[4]),
                       parts[5].rstrip("\n") if len(parts) > 5 else "")
    except ValueError:
        return None


def parse_smaps(text: str) -> list[RealVma]:
    """The mappings of an ``smaps`` text, in address order."""
    out: list[RealVma] = []
    cur: RealVma | None = None
    page_size, thp = 4096, False

    def close() -> None:
        if cur is not None:
            out.append(RealVma(cur.start, cur.end, cur.perms, cur.offset, cur.dev, cur.inode,
                               cur.path, page_size, thp))

    for line in text.splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef":
            head = _header(line)
            if head is not None:
                close()
                cur, page_size, thp = head, 4096, False
                continue
        if line.startswith("KernelPageSize:"):
            page_size = int(line.split()[1]) * 1024
        elif line.startswith("THPeligible:"):
            thp = line.split()[1] == "1"
    close()
    return out


def read_smaps(pid: int) -> list[RealVma]:
    """``/proc/PID/smaps`` of a live process (OSError when it is gone)."""
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
        return parse_smaps(f.read())


def read_maps(pid: int) -> bytes:
    """``/proc/PID/maps`` as bytes (OSError when the process is gone): what identifies
    the mappings (range, permissions, offset, device, inode, path) without the page
    walk and the text ``smaps`` adds; equal texts mean the same mappings."""
    with open(f"/proc/{pid}/maps", "rb") as f:
        return f.read()
