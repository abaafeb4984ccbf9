"""x86_64 Linux ABI the bridge speaks: syscall numbers, seccomp/landlock uAPI, raw syscalls.

Values are those of ``arch/x86/entry/syscalls/syscall_64.tbl``, ``linux/seccomp.h``,
``linux/landlock.h`` and ``linux/fcntl.h``. Syscalls Python's ``os`` lacks are called
through ``ctypes`` (``syscall(2)``), each wrapper raising ``OSError`` with the errno.
"""

from __future__ import annotations

import ctypes
import os
import struct

# --- syscall numbers (x86_64) --------------------------------------------------------
NR_read = 0
NR_write = 1
NR_close = 3
NR_open = 2
NR_stat = 4
NR_fstat = 5
NR_lstat = 6
NR_mmap = 9
NR_ioctl = 16
NR_pread64 = 17
NR_pwrite64 = 18
NR_readv = 19
NR_writev = 20
NR_access = 21
NR_dup = 32
NR_dup2 = 33
NR_sendfile = 40
NR_fcntl = 72
NR_fsync = 74
NR_fdatasync = 75
NR_getdents = 78
NR_getxattr = 191
NR_lgetxattr = 192
NR_listxattr = 194
NR_llistxattr = 195
NR_ftruncate = 77
NR_creat = 85
NR_getdents64 = 217
NR_readlink = 89
NR_openat = 257
NR_newfstatat = 262
NR_readlinkat = 267
NR_getdents64 = 217
NR_faccessat = 269
NR_splice = 275
NR_tee = 276
NR_fallocate = 285
NR_dup3 = 292
NR_preadv = 295
NR_pwritev = 296
NR_open_by_handle_at = 304
NR_process_vm_readv = 310
NR_process_vm_writev = 311
NR_seccomp = 317
NR_copy_file_range = 326
NR_preadv2 = 327
NR_pwritev2 = 328
NR_statx = 332
NR_io_uring_setup = 425
NR_pidfd_open = 434
NR_openat2 = 437
NR_pidfd_getfd = 438
NR_faccessat2 = 439
NR_landlock_create_ruleset = 444
NR_landlock_add_rule = 445
NR_landlock_restrict_self = 446

#: x32 syscalls have this bit set in ``nr`` on the x86_64 audit arch.
X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCH_X86_64 = 0xC000003E

# --- seccomp (linux/seccomp.h) ---------------------------------------------------------
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
# _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp), ...
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104
#: struct seccomp_notif: id, pid, flags, then struct seccomp_data (nr, arch, ip, args[6]).
NOTIF = struct.Struct("=QIIiIQ6Q")
#: struct seccomp_notif_resp: id, val, error, flags.
NOTIF_RESP = struct.Struct("=QqiI")
#: struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags.
NOTIF_ADDFD = struct.Struct("=QIIII")
#: offsetof(struct seccomp_data, ...)
DATA_NR = 0
DATA_ARCH = 4
DATA_ARGS = 16

# --- landlock (linux/landlock.h) -------------------------------------------------------
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_ACCESS_FS_WRITE_FILE = 1 << 1
LANDLOCK_ACCESS_FS_READ_FILE = 1 << 2
LANDLOCK_ACCESS_FS_MAKE_CHAR = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11
LANDLOCK_ACCESS_FS_REFER = 1 << 13  # ABI 2

# --- fcntl / open / stat ----------------------------------------------------------------
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
F_DUPFD = 0
F_DUPFD_CLOEXEC = 1030
O_PATH = 0o10000000
O_TMPFILE = 0o20200000
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
PIDFD_THREAD = 0o200  # O_EXCL
MAP_ANONYMOUS = 0x20
PATH_MAX = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def syscall(nr: int, *args: int | ctypes.c_void_p | ctypes.Array[ctypes.c_char]) -> int:
    """``syscall(2)``; raises ``OSError`` with the errno on a -1 return."""
    ret: int = _syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a
                                             for a in args])
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


_pvr = _libc.process_vm_readv
_pvw = _libc.process_vm_writev
for _f in (_pvr, _pvw):
    _f.restype = ctypes.c_ssize_t
    _f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_ulong]
# One staging buffer and one iovec pair, reused: the supervisor is single-threaded and
# these calls sit on every ioctl's path (a fresh ctypes buffer costs more than the copy).
_STAGE = ctypes.create_string_buffer(1 << 16)
_STAGE_ADDR = ctypes.addressof(_STAGE)
_LOCAL = IoVec()
_REMOTE = IoVec()
_LOCAL_P = ctypes.addressof(_LOCAL)
_REMOTE_P = ctypes.addressof(_REMOTE)


def _stage(length: int) -> tuple[int, object]:
    if length <= len(_STAGE):
        return _STAGE_ADDR, _STAGE
    big = ctypes.create_string_buffer(length)
    return ctypes.addressof(big), big


def process_vm_readv(pid: int, addr: int, length: int) -> bytes:
    """Read up to ``length`` bytes at ``addr`` in ``pid``; short at the first fault.

    ``process_vm_readv(2)`` copies page by page and stops at the first page it cannot
    read, so the result is the readable prefix (possibly empty). Not thread-safe.
    """
    local, keep = _stage(length)
    _LOCAL.iov_base, _LOCAL.iov_len = local, length
    _REMOTE.iov_base, _REMOTE.iov_len = addr, length
    ret: int = _pvr(pid, _LOCAL_P, 1, _REMOTE_P, 1, 0)
    if ret == -1:
        err = ctypes.get_errno()
        if err == 14:  # EFAULT: nothing readable at addr
            return b""
        raise OSError(err, os.strerror(err))
    del keep
    return ctypes.string_at(local, ret)


def process_vm_writev(pid: int, addr: int, data: bytes) -> int:
    """Write ``data`` at ``addr`` in ``pid``; bytes written (short at a fault)."""
    local, keep = _stage(len(data))
    ctypes.memmove(local, data, len(data))
    _LOCAL.iov_base, _LOCAL.iov_len = local, len(data)
    _REMOTE.iov_base, _REMOTE.iov_len = addr, len(data)
    ret: int = _pvw(pid, _LOCAL_P, 1, _REMOTE_P, 1, 0)
    if ret == -1:
        err = ctypes.get_errno()
        if err == 14:
            return 0
        raise OSError(err, os.strerror(err))
    del keep
    return ret


def pidfd_open(pid: int, flags: int = 0) -> int:
    return syscall(NR_pidfd_open, pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A supervisor fd for the target's open file description ``targetfd``."""
    return syscall(NR_pidfd_getfd, pidfd, targetfd, 0)


def inotify_init() -> int:
    ret: int = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def inotify_add_watch(ifd: int, path: str, mask: int) -> int:
    ret: int = _libc.inotify_add_watch(ifd, os.fsencode(path), ctypes.c_uint32(mask))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


IN_CLOSE_WRITE = 0x8
IN_CLOSE_NOWRITE = 0x10
IN_IGNORED = 0x8000
INOTIFY_EVENT = struct.Struct("=iIII")
