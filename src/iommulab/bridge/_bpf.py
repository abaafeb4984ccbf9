"""The seccomp filter: which syscalls reach the supervisor, as a classic-BPF program.

Three kinds of trap (``SECCOMP_RET_USER_NOTIF``):

* **path syscalls**, always: the open family and the stat/access/readlink family, since a
  filter cannot read the path string (``seccomp(2)``: BPF sees only the six raw args);
* **fd syscalls**, when an fd argument lies in the *fd window* ``[base, top)``, the range
  the supervisor installs its files into (``SECCOMP_ADDFD_FLAG_SETFD``): read/write and
  their vector and positional forms, mmap, fstat, dup/dup2/dup3, fcntl(F_DUPFD*),
  getdents64, close (only to learn which thread a release belongs to), ftruncate,
  fallocate, fsync, sendfile/splice/tee/copy_file_range;
* **ioctl**, when the request's type byte is ``';'`` (VFIO and iommufd, ``_IO(';', n)``),
  on any fd, or when the fd lies in the window.

Only the low 32 bits of an fd or request argument are compared, as the kernel reads them
(``unsigned int fd``). Foreign arches (i386 ``int 0x80``, x32) kill the process:
the model speaks the x86_64 ABI only. Everything else is ``SECCOMP_RET_ALLOW``.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from . import _abi as A

__all__ = ["FilterConfig", "build_filter"]

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RSH = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

#: Syscalls that name a path: always trapped.
PATH_SYSCALLS = (
    A.NR_open, A.NR_creat, A.NR_openat, A.NR_openat2,
    A.NR_stat, A.NR_lstat, A.NR_newfstatat, A.NR_statx,
    A.NR_access, A.NR_faccessat, A.NR_faccessat2,
    A.NR_readlink, A.NR_readlinkat,
    A.NR_getxattr, A.NR_lgetxattr, A.NR_listxattr, A.NR_llistxattr,
)
#: Syscalls trapped when argument 0 is in the fd window.
FD0_SYSCALLS = (
    A.NR_read, A.NR_write, A.NR_pread64, A.NR_pwrite64, A.NR_readv, A.NR_writev,
    A.NR_preadv, A.NR_pwritev, A.NR_preadv2, A.NR_pwritev2, A.NR_fstat, A.NR_dup,
    A.NR_ftruncate, A.NR_fallocate, A.NR_fsync, A.NR_fdatasync, A.NR_getdents,
    A.NR_getdents64, A.NR_close,
)
#: Syscalls trapped when argument 0 or 1 is in the window (dup2/dup3: old or new fd).
FD01_SYSCALLS = (A.NR_dup2, A.NR_dup3, A.NR_sendfile, A.NR_tee)
#: Syscalls trapped when argument 0 or 2 is in the window (in and out fds).
FD02_SYSCALLS = (A.NR_splice, A.NR_copy_file_range)
#: The ioctl type byte of ``linux/vfio.h`` (VFIO_TYPE) and ``linux/iommufd.h``.
IOCTL_TYPE = ord(";")


@dataclass(frozen=True)
class FilterConfig:
    """What the filter traps: the fd window and the syscalls refused outright."""

    window_base: int
    window_top: int
    #: ``io_uring_setup`` answers ENOSYS (ring operations would bypass the filter).
    deny_io_uring: bool = True
    #: ``open_by_handle_at`` answers EPERM (opens by inode, not by path).
    deny_open_by_handle: bool = True


class _Asm:
    """A tiny classic-BPF assembler: instructions with symbolic jump targets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.code):
            t = self.labels[jt] - pc - 1 if jt is not None else 0
            f = self.labels[jf] - pc - 1 if jf is not None else 0
            if not (0 <= t <= 255 and 0 <= f <= 255):
                raise ValueError(f"BPF jump out of range at {pc}: jt={t} jf={f}")
            out += struct.pack("=HBBI", code, t, f, k)
        return bytes(out)


def _in_window(asm: _Asm, arg: int, cfg: FilterConfig, yes: str, no: str) -> None:
    """Load the low word of ``args[arg]``; jump to ``yes`` if it is in the window."""
    asm.op(_LD_ABS, A.DATA_ARGS + 8 * arg)
    asm.op(_JGE, cfg.window_base, None, no)
    asm.op(_JGE, cfg.window_top, no, yes)


def build_filter(cfg: FilterConfig) -> bytes:
    """The ``struct sock_filter`` array (8 bytes an instruction) for ``cfg``."""
    a = _Asm()
    a.op(_LD_ABS, A.DATA_ARCH)
    a.op(_JEQ, A.AUDIT_ARCH_X86_64, None, "kill")
    a.op(_LD_ABS, A.DATA_NR)
    a.op(_JGE, A.X32_SYSCALL_BIT, "kill", None)
    for nr in PATH_SYSCALLS:
        a.op(_JEQ, nr, "notify", None)
    if cfg.deny_open_by_handle:
        a.op(_JEQ, A.NR_open_by_handle_at, "eperm", None)
    if cfg.deny_io_uring:
        a.op(_JEQ, A.NR_io_uring_setup, "enosys", None)
    a.op(_JEQ, A.NR_ioctl, "ioctl", None)
    a.op(_JEQ, A.NR_mmap, "fd4", None)
    a.op(_JEQ, A.NR_fcntl, "fcntl", None)
    for nr in FD0_SYSCALLS:
        a.op(_JEQ, nr, "fd0", None)
    for nr in FD01_SYSCALLS:
        a.op(_JEQ, nr, "fd01", None)
    for nr in FD02_SYSCALLS:
        a.op(_JEQ, nr, "fd02", None)
    a.op(_RET, A.SECCOMP_RET_ALLOW)

    a.label("ioctl")
    a.op(_LD_ABS, A.DATA_ARGS + 8)
    a.op(_RSH, 8)
    a.op(_AND, 0xFF)
    a.op(_JEQ, IOCTL_TYPE, "notify", "fd0")

    a.label("fcntl")
    a.op(_LD_ABS, A.DATA_ARGS + 8)
    a.op(_JEQ, A.F_DUPFD, "fd0", None)
    a.op(_JEQ, A.F_DUPFD_CLOEXEC, "fd0", "allow")

    a.label("fd01")
    _in_window(a, 1, cfg, "notify", "fd0")
    a.label("fd02")
    _in_window(a, 2, cfg, "notify", "fd0")
    a.label("fd4")
    _in_window(a, 4, cfg, "notify", "allow")
    a.label("fd0")
    _in_window(a, 0, cfg, "notify", "allow")

    a.label("allow")
    a.op(_RET, A.SECCOMP_RET_ALLOW)
    a.label("notify")
    a.op(_RET, A.SECCOMP_RET_USER_NOTIF)
    a.label("eperm")
    a.op(_RET, A.SECCOMP_RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(_RET, A.SECCOMP_RET_ERRNO | errno.ENOSYS)
    a.label("kill")
    a.op(_RET, A.SECCOMP_RET_KILL_PROCESS)
    return a.assemble()
