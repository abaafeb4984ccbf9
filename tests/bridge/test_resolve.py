"""The path walk that decides whether the model answers an open or a stat."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from iommulab.bridge import Node
from iommulab.bridge import _abi as A
from iommulab.bridge._resolve import Resolver

SERVED = {
    "/dev/iommu": Node.chardev(10, 123),
    "/dev/vfio": Node(stat.S_IFDIR | 0o755),
    "/dev/vfio/vfio": Node.chardev(10, 196),
    "/dev/vfio/devices": Node(stat.S_IFDIR | 0o755),
    "/dev/vfio/devices/vfio0": Node.chardev(237, 0),
}
ME = os.getpid()


def walk(path: str | bytes, *, dirfd: int = A.AT_FDCWD, follow: bool = True,
         ours: set[tuple[int, int]] | None = None) -> tuple[str | None, int]:
    r = Resolver(SERVED.get, lambda d, i: (d, i) in (ours or set()))
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    res = r.resolve(ME, ME, dirfd, raw, follow=follow)
    return res.served, res.error


def test_lexical_forms() -> None:
    assert walk("/dev/iommu") == ("/dev/iommu", 0)
    assert walk("//dev/./iommu") == ("/dev/iommu", 0)
    assert walk("/dev/../dev/vfio/../iommu") == ("/dev/iommu", 0)
    assert walk("/dev/vfio/devices/vfio0") == ("/dev/vfio/devices/vfio0", 0)
    assert walk("/dev/vfio") == ("/dev/vfio", 0)


def test_inside_the_served_tree() -> None:
    assert walk("/dev/vfio/7") == (None, errno.ENOENT)
    assert walk("/dev/iommu/x") == (None, errno.ENOTDIR)
    assert walk("/dev/iommu/") == (None, errno.ENOTDIR)


def test_not_served_goes_to_the_kernel() -> None:
    assert walk("/etc/passwd") == (None, 0)
    assert walk("/nonexistent/../dev/iommu") == (None, 0)  # the kernel's walk fails first
    assert walk("/etc/passwd/x") == (None, 0)


def test_symlinks(tmp_path: Path) -> None:
    (tmp_path / "abs").symlink_to("/dev/iommu")
    (tmp_path / "dir").symlink_to("/dev/vfio")
    (tmp_path / "rel").symlink_to("../../../../../../../../../../dev/iommu")
    (tmp_path / "loop").symlink_to("loop")
    assert walk(str(tmp_path / "abs")) == ("/dev/iommu", 0)
    assert walk(str(tmp_path / "dir") + "/vfio") == ("/dev/vfio/vfio", 0)
    assert walk(str(tmp_path / "rel")) == ("/dev/iommu", 0)
    assert walk(str(tmp_path / "abs"), follow=False) == (None, 0)  # O_NOFOLLOW: the link
    assert walk(str(tmp_path / "loop")) == (None, 0)  # ELOOP, the kernel's to say


def test_relative_to_cwd_and_dirfd(tmp_path: Path) -> None:
    old = os.getcwd()
    os.chdir("/dev")
    try:
        assert walk("iommu") == ("/dev/iommu", 0)
        assert walk("./vfio/vfio") == ("/dev/vfio/vfio", 0)
    finally:
        os.chdir(old)
    fd = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert walk("iommu", dirfd=fd) == ("/dev/iommu", 0)
        assert walk(f"/proc/self/fd/{fd}/iommu") == ("/dev/iommu", 0)
        assert walk(f"/dev/fd/{fd}/vfio/vfio") == ("/dev/vfio/vfio", 0)
    finally:
        os.close(fd)


def test_proc_fd_link_to_our_file_is_a_reopen(tmp_path: Path) -> None:
    f = tmp_path / "backing"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        r = Resolver(SERVED.get, lambda d, i: (d, i) == key)
        res = r.resolve(ME, ME, A.AT_FDCWD, f"/proc/self/fd/{fd}".encode())
        assert res.reopen == key
        res = r.resolve(ME, ME, A.AT_FDCWD, f"/proc/thread-self/fd/{fd}".encode(),
                        follow=False)
        assert res.link_to == key
        res = r.resolve(ME, ME, A.AT_FDCWD, f"/proc/self/fd/{fd}/x".encode())
        assert res.error == errno.ENOTDIR
    finally:
        os.close(fd)


def test_undecodable_and_real_inode() -> None:
    assert walk(b"/dev/\xff") == (None, 0)
    r = Resolver(SERVED.get, lambda d, i: False)
    res = r.resolve(ME, ME, A.AT_FDCWD, b"/dev/null")
    assert res.real is not None and stat.S_ISCHR(res.real.st_mode)


def test_served_symlinks() -> None:
    """A served link is followed as the kernel's walk follows one (relative to its
    directory, absolute from the root, into the served or the real tree, ELOOP past 40
    links); the last one is not with ``follow=False``."""
    tree = {**SERVED, "/dev/vfio/grp": Node.symlink("devices/vfio0"),
            "/dev/vfio/up": Node.symlink("../iommu"), "/dev/vfio/abs": Node.symlink("/dev/vfio"),
            "/dev/vfio/etc": Node.symlink("/etc"), "/dev/vfio/loop": Node.symlink("loop")}
    r = Resolver(tree.get, lambda d, i: False)

    def go(path: str, follow: bool = True) -> tuple[str | None, int, bool]:
        res = r.resolve(ME, ME, A.AT_FDCWD, os.fsencode(path), follow=follow)
        return res.served, res.error, res.real is not None

    assert go("/dev/vfio/grp") == ("/dev/vfio/devices/vfio0", 0, False)
    assert go("/dev/vfio/up") == ("/dev/iommu", 0, False)
    assert go("/dev/vfio/abs/vfio") == ("/dev/vfio/vfio", 0, False)
    assert go("/dev/vfio/etc/passwd") == (None, 0, True)  # into the real tree
    assert go("/dev/vfio/grp", follow=False) == ("/dev/vfio/grp", 0, False)
    assert go("/dev/vfio/up/", follow=False) == (None, errno.ENOTDIR, False)
    assert go("/dev/vfio/loop") == (None, errno.ELOOP, False)
    assert Node.symlink("../iommu").is_link and Node.symlink("x").size == 1


def test_dirfd_of_a_served_directory() -> None:
    """A relative path from a dirfd open on a served directory starts there, inside the
    served tree (a missing name is ENOENT, not the real tree's answer)."""
    r = Resolver(SERVED.get, lambda d, i: False,
                 lambda tid, fd: "/dev/vfio" if fd == 900 else None)

    def go(path: str) -> tuple[str | None, int]:
        res = r.resolve(ME, ME, 900, os.fsencode(path))
        return res.served, res.error

    assert go("vfio") == ("/dev/vfio/vfio", 0)
    assert go("devices/vfio0") == ("/dev/vfio/devices/vfio0", 0)
    assert go("../iommu") == ("/dev/iommu", 0)
    assert go("nope") == (None, errno.ENOENT)
