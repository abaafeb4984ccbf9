"""The fence: a Landlock ruleset under which the protected device paths cannot be opened.

Landlock grants by "path beneath" and cannot subtract, so "everything except
``/dev/iommu`` and ``/dev/vfio``" is written as grants on every sibling along the way:
the children of ``/`` but ``/dev``, the children of ``/dev`` but ``iommu`` and ``vfio``.
Handled and never granted: ``MAKE_CHAR`` and ``MAKE_BLOCK`` (no new device node, no hard
link or rename of one). ``REFER`` (ABI 2) is handled and granted on the sibling trees, so
cross-directory renames keep working while a protected node cannot be moved to where it
would gain access. Landlock checks the opened inode's own path at ``security_file_open``,
so symlinks, ``/proc/PID/fd`` and ``/proc/PID/root`` re-opens and ``open_by_handle_at``
all meet it (``Documentation/userspace-api/landlock.rst``); a sandboxed process cannot
mount, and cannot ptrace or ``pidfd_getfd`` a process outside its domain.

Cost of the approach: a file created after launch directly in a directory on a protected
path (``/`` or ``/dev`` for the defaults) is not readable or writable by the program.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Sequence

from . import _abi as A

__all__ = ["landlock_abi", "make_ruleset", "restrict_self"]


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version, 0 if Landlock is off or absent."""
    try:
        return A.syscall(A.NR_landlock_create_ruleset, 0, 0, A.LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/", "/a", "/a/b"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


def make_ruleset(protect: Sequence[str]) -> int:
    """A ruleset fd (close-on-exec) granting file access everywhere but under ``protect``.

    ``protect`` holds absolute paths; they need not exist (a missing ``/dev/vfio`` stays
    unreachable should it appear). Raises ``OSError(EOPNOTSUPP)`` without Landlock.
    """
    abi = landlock_abi()
    if abi == 0:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not enabled in this kernel")
    rw = A.LANDLOCK_ACCESS_FS_READ_FILE | A.LANDLOCK_ACCESS_FS_WRITE_FILE
    refer = A.LANDLOCK_ACCESS_FS_REFER if abi >= 2 else 0
    handled = rw | A.LANDLOCK_ACCESS_FS_MAKE_CHAR | A.LANDLOCK_ACCESS_FS_MAKE_BLOCK | refer
    attr = ctypes.create_string_buffer(struct.pack("=Q", handled), 8)
    ruleset = A.syscall(A.NR_landlock_create_ruleset, ctypes.addressof(attr), 8, 0)
    try:
        fenced = {os.path.normpath(p) for p in protect}
        on_path = {a for p in fenced for a in _ancestors(p)}
        for parent in sorted(on_path):
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                full = os.path.join(parent, name)
                if full in fenced or full in on_path:
                    continue
                _allow(ruleset, full, rw, refer)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def _allow(ruleset: int, path: str, rw: int, refer: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # gone since listdir
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            return  # the rule would sit on the link; its target is covered where it lives
        access = rw | refer if stat.S_ISDIR(mode) else rw
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        A.syscall(A.NR_landlock_add_rule, ruleset, A.LANDLOCK_RULE_PATH_BENEATH,
                  ctypes.addressof(rule), 0)
    finally:
        os.close(fd)


def restrict_self(ruleset: int) -> None:
    """Enforce ``ruleset`` on the calling thread (inherited by children and execve)."""
    A.syscall(A.NR_landlock_restrict_self, ruleset, 0)
