"""Which file a program's path names, as the kernel's path walk would find it.

The walk runs component by component in the program's view (its cwd, its dirfd, its
root), consulting the handler's served tree before the real filesystem, so a served
path wins whether or not a real node sits there: ``/dev/iommu``, ``//dev/./iommu``,
``/tmp/link`` -> ``/dev/iommu``, ``/dev/fd/3/iommu`` with fd 3 a directory fd of
``/dev``. ``/proc/self`` and ``/proc/thread-self`` mean the caller. A ``/proc/PID/fd/N``
magic link to one of the bridge's own files is a re-open of that file (the kernel calls
the driver's ``open`` again for a char device re-opened that way).

This decides only *whether the model answers*; anything not served goes back to the
kernel (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``), which walks the path again itself and
answers its own errors (ENOENT, ELOOP, EXDEV for ``openat2``'s RESOLVE flags). The walk
is therefore racy against a program that rewrites its symlinks meanwhile; what makes the
real device unreachable is the Landlock fence, not this walk.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import _abi as A
from .handler import Node

__all__ = ["Resolution", "Resolver"]

_MAXSYMLINKS = 40  # include/linux/namei.h


@dataclass(frozen=True)
class Resolution:
    """The outcome of a walk. At most one of ``served``, ``reopen``, ``error`` is set."""

    #: A served path was reached: its normalised absolute path and node.
    served: str | None = None
    node: Node | None = None
    #: One of the bridge's files was reached through a ``/proc/PID/fd/N`` link.
    reopen: tuple[int, int] | None = None
    #: The final component is such a link, not followed (for ``readlink``).
    link_to: tuple[int, int] | None = None
    #: The kernel's answer for a walk inside the served tree (ENOENT, ENOTDIR).
    error: int = 0
    #: Not served: the real inode reached, when the walk got to one.
    real: os.stat_result | None = None


_NOT_SERVED = Resolution()


class Resolver:
    """Walks paths for one bridge: ``lookup`` is the handler's, ``ours`` maps (dev, ino)."""

    def __init__(self, lookup: Callable[[str], Node | None],
                 ours: Callable[[int, int], bool],
                 dir_at: Callable[[int, int], str | None] = lambda tid, fd: None) -> None:
        self._lookup = lookup
        self._ours = ours
        self._dir_at = dir_at  # the served directory a program fd is open on, if any

    def start_dir(self, tid: int, dirfd: int) -> str | None:
        """The directory a relative path starts from, in the program's view (a served
        directory for a dirfd the bridge opened on one)."""
        if dirfd != A.AT_FDCWD:
            served = self._dir_at(tid, dirfd)
            if served is not None:
                return served
        link = f"/proc/{tid}/cwd" if dirfd == A.AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
        try:
            where = os.readlink(link)
        except OSError:
            return None
        return where if where.startswith("/") else None

    def resolve(self, tid: int, tgid: int, dirfd: int, path: bytes, *,
                follow: bool = True) -> Resolution:
        """Walk ``path`` (relative to ``dirfd`` when not absolute) for thread ``tid``.

        ``follow`` says whether a symlink in the last component is followed
        (``O_NOFOLLOW``, ``AT_SYMLINK_NOFOLLOW``, ``lstat``, ``readlink``).
        Cost: one ``lstat`` per real component walked, one ``readlink`` per symlink.
        """
        try:
            text = os.fsdecode(path)
        except UnicodeDecodeError:
            return _NOT_SERVED
        if text.startswith("/"):
            stack: list[str] = []
        else:
            base = self.start_dir(tid, dirfd)
            if base is None:
                return _NOT_SERVED
            stack = [c for c in base.split("/") if c]
        must_be_dir = text.endswith("/")
        todo = [c for c in text.split("/") if c][::-1]  # a stack: next component last
        links = 0
        served_dir = self._is_served_dir(stack)  # inside one: the real tree is hidden
        while todo:
            comp = todo.pop()
            last = not todo
            if comp == ".":
                continue
            if comp == "..":
                if stack:
                    stack.pop()
                served_dir = self._is_served_dir(stack)
                continue
            if stack == ["proc"] and comp in ("self", "thread-self"):
                stack.append(str(tgid))
                if comp == "thread-self":
                    stack += ["task", str(tid)]
                continue
            cand = "/" + "/".join([*stack, comp])
            node = self._lookup(cand)
            if node is not None and node.is_link and (not last or follow or must_be_dir):
                links += 1  # a served symlink, followed as pick_link would
                if links > _MAXSYMLINKS:
                    return Resolution(error=errno.ELOOP)
                if node.target.startswith("/"):
                    stack = []
                served_dir = self._is_served_dir(stack)
                if node.target.endswith("/"):
                    must_be_dir = must_be_dir or last
                todo += [c for c in node.target.split("/") if c][::-1]
                continue
            if node is not None:
                if node.is_dir:
                    stack.append(comp)
                    served_dir = True
                    continue
                if not last or must_be_dir:
                    return Resolution(error=errno.ENOTDIR)
                return Resolution(served=cand, node=node)
            if served_dir:
                return Resolution(error=errno.ENOENT)
            try:
                st = os.lstat(cand)
            except OSError:
                return _NOT_SERVED  # the kernel's walk fails here too, with its own errno
            if stat.S_ISLNK(st.st_mode):
                key = self._magic_target(stack, comp, cand)
                if key is not None:
                    if last and not follow:
                        return Resolution(link_to=key)
                    if not last or must_be_dir:
                        return Resolution(error=errno.ENOTDIR)
                    return Resolution(reopen=key)
                if last and not follow:
                    return Resolution(real=st)
                links += 1
                if links > _MAXSYMLINKS:
                    return _NOT_SERVED  # ELOOP, the kernel's to say
                try:
                    target = os.readlink(cand)
                except OSError:
                    return _NOT_SERVED
                if not target or target.endswith(" (deleted)") or ":" in target.split("/")[0]:
                    return _NOT_SERVED  # an anonymous file, pipe, socket: not a path
                if target.startswith("/"):
                    stack = []
                if target.endswith("/"):
                    must_be_dir = must_be_dir or last
                todo += [c for c in target.split("/") if c][::-1]
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(comp)
                continue
            if not last:
                return _NOT_SERVED  # ENOTDIR, the kernel's to say
            return Resolution(real=st)
        final = "/" + "/".join(stack)
        node = self._lookup(final)
        if node is not None:
            return Resolution(served=final, node=node)
        try:
            return Resolution(real=os.stat(final))
        except OSError:
            return _NOT_SERVED

    def _is_served_dir(self, stack: list[str]) -> bool:
        node = self._lookup("/" + "/".join(stack)) if stack else None
        return node is not None and node.is_dir

    def _magic_target(self, stack: list[str], comp: str, cand: str) -> tuple[int, int] | None:
        """(dev, ino) when ``cand`` is a ``/proc/PID[/task/TID]/fd/N`` link to our file."""
        if not (len(stack) in (3, 5) and stack[0] == "proc" and stack[-1] == "fd"
                and comp.isdigit()):
            return None
        try:
            st = os.stat(cand)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        return key if self._ours(*key) else None
