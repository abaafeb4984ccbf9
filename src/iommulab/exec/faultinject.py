"""The fault-injection files a program under ``iommulab exec`` sees (lab: stand-ins).

* ``/proc/PID/task/TID/fail-nth`` (and ``/proc/PID/fail-nth``, the thread-group leader's):
  each thread's ``fail_nth`` counter, read and written as ``proc_fail_nth_read`` and
  ``proc_fail_nth_write`` (fs/proc/base.c) do. The model's :class:`~iommulab.mem.fault.
  FailNth` is one counter for the machine; the handler loads a thread's counter into it
  for the length of that thread's call into the model and stores what is left
  afterwards (``should_fail_ex`` decrements ``current->fail_nth``), so only the model's
  kernel points count, each against the thread whose call reached it.
* ``/sys/kernel/debug/{failslab,fail_page_alloc,fail_iommufd}/``: the debugfs knobs of
  ``fault_create_debugfs_attr`` (lib/fault-inject.c) and the two callers' own
  (mm/failslab.c, mm/fail_page_alloc.c), with their defaults, formats and parsers
  (``simple_attr_read``/``simple_attr_write``, ``debugfs_read_file_bool``/
  ``debugfs_write_file_bool``). ``fail_iommufd`` exists on a CONFIG_IOMMUFD_TEST kernel
  (the ``mock`` platform). No stack-trace filter files (the selftest's config has no
  CONFIG_FAULT_INJECTION_STACKTRACE_FILTER). The knobs are kept and read back; with
  fail-nth armed ``should_fail_ex`` looks at none of the fault_attr's own ones, and the
  model's point table is the one ``iommufd_fail_nth``'s setup makes (``ignore-gfp-wait``
  N), which is what the model counts whatever they say (lab: a limit).
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field

from ..bridge.handler import Node
from ..bridge.memory import TargetMemory
from ..errors import kernel_error

__all__ = ["DEBUGFS", "DebugfsFile", "FailNthFile", "FaultKnobs", "fail_nth_target",
           "kstrtobool", "kstrtoull", "simple_read"]

DEBUGFS = "/sys/kernel/debug"
_ULONG_MAX = (1 << 64) - 1
_PROC_NUMBUF = 13
#: kstrtouint_from_user's buffer: sign, 32 binary digits, newline, terminator
_UINT_BUF = 1 + 32 + 1 + 1
_ATTR_BUF = 24  # struct simple_attr's get_buf and set_buf
_BOOL_BUF = 4  # kstrtobool_from_user's buffer
FILE_NODE = Node(stat.S_IFREG | 0o600)  # fault_create_debugfs_attr: S_IFREG | 0600
FAIL_NTH_NODE = Node(stat.S_IFREG | 0o644)  # REG("fail-nth", 0644, ...)
DIR_NODE = Node(stat.S_IFDIR | 0o755)  # debugfs_create_dir
ROOT_NODE = Node(stat.S_IFDIR | 0o700)  # DEBUGFS_DEFAULT_MODE


# -- the kernel's parsers (lib/kstrtox.c) ----------------------------------------------------------
def kstrtoull(s: bytes, base: int = 0) -> int:
    """``kstrtoull``: an optional ``+``, the radix prefix base 0 reads (``0x`` hex, ``0``
    octal), digits, one optional newline, nothing else; EINVAL, ERANGE past 64 bits."""
    s = s.split(b"\0", 1)[0]
    if s[:1] == b"+":
        s = s[1:]
    if base == 0:  # _parse_integer_fixup_radix
        hexa = s[1:2].lower() == b"x" and _isxdigit(s[2:3])
        base = (16 if hexa else 8) if s[:1] == b"0" else 10
    if base == 16 and s[:2].lower() == b"0x":
        s = s[2:]
    val = n = 0
    while n < len(s):
        c = s[n:n + 1].lower()
        d = int(c, 16) if _isxdigit(c) else 99
        if d >= base:
            break
        val = val * base + d
        n += 1
    if val > _ULONG_MAX:
        raise kernel_error(errno.ERANGE, f"{s!r} overflows")
    if n == 0:
        raise kernel_error(errno.EINVAL, f"no digits in {s!r}")
    rest = s[n:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise kernel_error(errno.EINVAL, f"trailing {rest!r}")
    return val


def _isxdigit(c: bytes) -> bool:
    return len(c) == 1 and c in b"0123456789abcdefABCDEF"


def kstrtoll(s: bytes) -> int:
    """``kstrtoll`` base 0: a ``-`` then :func:`kstrtoull`; ERANGE outside 64 signed bits."""
    s = s.split(b"\0", 1)[0]
    if s[:1] == b"-":
        v = kstrtoull(s[1:])
        if v > 1 << 63:
            raise kernel_error(errno.ERANGE, f"{s!r} underflows")
        return -v
    v = kstrtoull(s)
    if v >= 1 << 63:
        raise kernel_error(errno.ERANGE, f"{s!r} overflows")
    return v


def kstrtobool(s: bytes) -> bool:
    """``kstrtobool``: y/Y/t/T/1, n/N/f/F/0, on/off by their first two letters."""
    s = s.split(b"\0", 1)[0]
    c = s[:1].lower()
    if c in (b"y", b"t", b"1"):
        return True
    if c in (b"n", b"f", b"0"):
        return False
    if c == b"o":
        if s[1:2].lower() == b"n":
            return True
        if s[1:2].lower() == b"f":
            return False
    raise kernel_error(errno.EINVAL, f"{s!r} is not a boolean")


def from_user(mem: TargetMemory, buf: int, count: int, size: int) -> bytes:
    """The ``kstrto*_from_user`` copy: at most ``size - 1`` bytes (EFAULT at a fault)."""
    return mem.read(buf, min(count, size - 1))


def simple_read(mem: TargetMemory, buf: int, count: int, pos: int, data: bytes) -> int:
    """``simple_read_from_buffer``: what of ``data`` lies at ``pos``, up to ``count``;
    a copy that faults part way gives what it copied, EFAULT when nothing."""
    if pos < 0:
        raise kernel_error(errno.EINVAL, f"read at {pos}")
    if pos >= len(data) or not count:
        return 0
    chunk = data[pos:pos + count]
    try:
        mem.write(buf, chunk)
    except OSError:
        done = 0
        for i in range(len(chunk)):  # copy_to_user's partial copy, byte by byte (rare)
            try:
                mem.write(buf + i, chunk[i:i + 1])
            except OSError:
                break
            done += 1
        if not done:
            raise kernel_error(errno.EFAULT, f"read into {buf:#x}") from None
        return done
    return len(chunk)


# -- /proc/.../fail-nth ----------------------------------------------------------------------------
def fail_nth_target(path: str) -> tuple[int, int] | None:
    """(pid, tid) a ``/proc/PID/fail-nth`` (tid = pid: the leader) or
    ``/proc/PID/task/TID/fail-nth`` path names, or None for any other path."""
    parts = path.split("/")
    if len(parts) == 4 and parts[:2] == ["", "proc"] and parts[3] == "fail-nth":
        pid = _number(parts[2])
        return None if pid is None else (pid, pid)
    if len(parts) == 6 and parts[:2] == ["", "proc"] and parts[3] == "task" \
            and parts[5] == "fail-nth":
        pid, tid = _number(parts[2]), _number(parts[4])
        return None if pid is None or tid is None else (pid, tid)
    return None


def _number(s: str) -> int | None:
    """A /proc directory name: a pid with no sign, no leading zero (``name_to_int``)."""
    if not s.isdigit() or not s.isascii() or (len(s) > 1 and s[0] == "0"):
        return None
    return int(s)


@dataclass(eq=False)
class FailNthFile:
    """An open ``fail-nth`` of thread ``tid``: ``counters`` is the handler's table
    (tid -> ``fail_nth``), ``alive`` tells whether the task still exists."""

    tid: int
    counters: dict[int, int]

    def read(self, mem: TargetMemory, buf: int, count: int, pos: int, alive: bool) -> int:
        """``proc_fail_nth_read``: ``"%u\\n"`` of the counter (ESRCH once the task is gone)."""
        if not alive:
            raise kernel_error(errno.ESRCH, f"task {self.tid} is gone")
        text = f"{self.counters.get(self.tid, 0)}\n".encode()[:_PROC_NUMBUF - 1]
        return simple_read(mem, buf, count, pos, text)

    def write(self, mem: TargetMemory, buf: int, count: int, alive: bool) -> int:
        """``proc_fail_nth_write``: ``kstrtouint_from_user`` base 0 (any offset), then the
        task (ESRCH); the counter set, the whole count claimed."""
        n = kstrtoull(from_user(mem, buf, count, _UINT_BUF))
        if n > 0xFFFF_FFFF:
            raise kernel_error(errno.ERANGE, f"{n} is not an unsigned int")
        if not alive:
            raise kernel_error(errno.ESRCH, f"task {self.tid} is gone")
        self.counters[self.tid] = n
        return count


# -- /sys/kernel/debug/fail*/ ----------------------------------------------------------------------
#: the knobs of ``fault_create_debugfs_attr``: name -> (kind, FAULT_ATTR_INITIALIZER's value)
_ATTR = {
    "probability": ("ul", 0), "interval": ("ul", 1), "times": ("atomic", 1),
    "space": ("atomic", 0), "verbose": ("ul", 2),
    "verbose_ratelimit_interval_ms": ("u32", 0),  # RATELIMIT_STATE_INIT_DISABLED
    "verbose_ratelimit_burst": ("u32", 10),  # DEFAULT_RATELIMIT_BURST
    "task-filter": ("bool", 0),
}
#: each fault_attr's own knobs after the common ones
_OWN = {
    "failslab": {"ignore-gfp-wait": ("bool", 1), "cache-filter": ("bool", 0)},
    "fail_page_alloc": {"ignore-gfp-wait": ("bool", 1), "ignore-gfp-highmem": ("bool", 1),
                        "min-order": ("u32", 1)},
    "fail_iommufd": {},
}


@dataclass
class FaultKnobs:
    """The debugfs fault attributes the model's kernel has: ``values[dir][knob]``."""

    iommufd_test: bool
    values: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.dirs():
            self.values[name] = {k: v for k, (_, v) in {**_ATTR, **_OWN[name]}.items()}

    def dirs(self) -> list[str]:
        """The fault_attr directories, in the order their initcalls make them."""
        return ["failslab", "fail_page_alloc"] + (["fail_iommufd"] if self.iommufd_test else [])

    def lookup(self, path: str) -> Node | None:
        if path == DEBUGFS:
            return ROOT_NODE
        rel = path.removeprefix(DEBUGFS + "/")
        if rel == path:
            return None
        d, _, knob = rel.partition("/")
        if d not in self.values:
            return None
        if not knob:
            return DIR_NODE
        return FILE_NODE if knob in self.values[d] else None

    def readdir(self, path: str) -> list[tuple[str, Node]]:
        if path == DEBUGFS:
            return [(d, DIR_NODE) for d in self.dirs()]
        d = path.removeprefix(DEBUGFS + "/")
        return [(k, FILE_NODE) for k in self.values.get(d, {})]

    def kind(self, d: str, knob: str) -> str:
        return {**_ATTR, **_OWN[d]}[knob][0]


@dataclass(eq=False)
class DebugfsFile:
    """An open knob ``d/knob``. ``get_buf`` is ``simple_attr``'s text from the read at
    offset 0, which a continued read (offset > 0) goes on with."""

    knobs: FaultKnobs
    d: str
    knob: str
    get_buf: bytes = b""

    def _text(self) -> bytes:
        v = self.knobs.values[self.d][self.knob]
        kind = self.knobs.kind(self.d, self.knob)
        if kind == "bool":
            return b"Y\n" if v else b"N\n"
        if kind == "atomic":  # DEFINE_DEBUGFS_ATTRIBUTE_SIGNED(..., "%lld\n")
            return f"{v}\n".encode()
        return f"{v}\n".encode()[:_ATTR_BUF - 1]  # "%llu\n"

    def read(self, mem: TargetMemory, buf: int, count: int, pos: int) -> int:
        """``debugfs_read_file_bool`` (``Y``/``N``, newline) or ``simple_attr_read``."""
        if self.knobs.kind(self.d, self.knob) == "bool":
            return simple_read(mem, buf, count, pos, self._text())
        if pos == 0:
            self.get_buf = self._text()
        return simple_read(mem, buf, count, pos, self.get_buf)

    def write(self, mem: TargetMemory, buf: int, count: int) -> int:
        """``debugfs_write_file_bool`` (``kstrtobool_from_user``) or ``simple_attr_write``
        (23 bytes at most, ``kstrtoull``/``kstrtoll`` base 0; a u32 or atomic_t keeps the
        low 32 bits); the whole count claimed."""
        kind = self.knobs.kind(self.d, self.knob)
        vals = self.knobs.values[self.d]
        if kind == "bool":
            vals[self.knob] = int(kstrtobool(from_user(mem, buf, count, _BOOL_BUF)))
            return count
        text = from_user(mem, buf, count, _ATTR_BUF)
        if kind == "atomic":
            v = kstrtoll(text) & 0xFFFF_FFFF
            vals[self.knob] = v - (1 << 32) if v & 0x8000_0000 else v
        else:
            v = kstrtoull(text)
            vals[self.knob] = v & 0xFFFF_FFFF if kind == "u32" else v
        return count
