"""The seccomp filter, run on an emulator of the classic-BPF subset it uses."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.bridge import _abi as A
from iommulab.bridge import fd_window
from iommulab.bridge._bpf import FD0_SYSCALLS, PATH_SYSCALLS, FilterConfig, build_filter

CFG = FilterConfig(768, 1024)
NOTIFY, ALLOW, KILL = A.SECCOMP_RET_USER_NOTIF, A.SECCOMP_RET_ALLOW, A.SECCOMP_RET_KILL_PROCESS


def run_filter(prog: bytes, nr: int, *args: int, arch: int = A.AUDIT_ARCH_X86_64) -> int:
    """Interpret ``prog`` on ``struct seccomp_data`` as the kernel's BPF would."""
    full = list(args) + [0] * (6 - len(args))
    data = struct.pack("=iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in full])
    acc = 0
    pc = 0
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x74:
            acc >>= k
        elif code == 0x54:
            acc &= k
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x35:
            pc += jt if acc >= k else jf
        elif code == 0x06:
            return int(k)
        else:
            raise AssertionError(f"unexpected BPF op {code:#x}")


PROG = build_filter(CFG)


def test_path_syscalls_always_notify() -> None:
    for nr in PATH_SYSCALLS:
        assert run_filter(PROG, nr, A.AT_FDCWD & 0xFFFFFFFF, 0x1000) == NOTIFY


@pytest.mark.parametrize("fd", [0, 3, 767, 1024, 5000])
def test_fd_syscalls_outside_the_window_run_untouched(fd: int) -> None:
    for nr in FD0_SYSCALLS:
        assert run_filter(PROG, nr, fd, 0, 0) == ALLOW
    assert run_filter(PROG, A.NR_mmap, 0, 4096, 3, 1, fd, 0) == ALLOW
    assert run_filter(PROG, A.NR_ioctl, fd, 0x5401, 0) == ALLOW  # TCGETS


@pytest.mark.parametrize("fd", [768, 900, 1023, 768 | (1 << 32)])
def test_fd_syscalls_in_the_window_notify(fd: int) -> None:
    """The kernel reads ``unsigned int fd``: high bits in the register do not hide it."""
    for nr in FD0_SYSCALLS:
        assert run_filter(PROG, nr, fd, 0, 0) == NOTIFY
    assert run_filter(PROG, A.NR_mmap, 0, 4096, 3, 1, fd, 0) == NOTIFY
    assert run_filter(PROG, A.NR_ioctl, fd, 0x5401, 0) == NOTIFY


def test_vfio_and_iommufd_ioctls_notify_on_any_fd() -> None:
    for req in (0x3B64, 0x3B80, 0x3B70, 0xC0183B80 & 0xFFFFFFFF):  # VFIO_GET_API_VERSION..
        assert run_filter(PROG, A.NR_ioctl, 3, req, 0) == NOTIFY
    assert run_filter(PROG, A.NR_ioctl, 3, 0xAE80, 0) == ALLOW  # KVM_RUN: never trapped


def test_dup_family() -> None:
    assert run_filter(PROG, A.NR_dup2, 3, 4) == ALLOW
    assert run_filter(PROG, A.NR_dup2, 1000, 4) == NOTIFY
    assert run_filter(PROG, A.NR_dup2, 3, 1000) == NOTIFY
    assert run_filter(PROG, A.NR_dup3, 3, 1000, 0) == NOTIFY
    assert run_filter(PROG, A.NR_fcntl, 1000, A.F_DUPFD, 0) == NOTIFY
    assert run_filter(PROG, A.NR_fcntl, 1000, A.F_DUPFD_CLOEXEC, 0) == NOTIFY
    assert run_filter(PROG, A.NR_fcntl, 1000, 3, 0) == ALLOW  # F_GETFL
    assert run_filter(PROG, A.NR_fcntl, 3, A.F_DUPFD, 1000) == ALLOW
    assert run_filter(PROG, A.NR_splice, 3, 0, 1000, 0, 8, 0) == NOTIFY
    assert run_filter(PROG, A.NR_sendfile, 3, 1000, 0, 8) == NOTIFY


def test_refused_outright() -> None:
    assert run_filter(PROG, A.NR_open_by_handle_at, 3, 0, 0) == (
        A.SECCOMP_RET_ERRNO | errno.EPERM)
    assert run_filter(PROG, A.NR_io_uring_setup, 8, 0) == A.SECCOMP_RET_ERRNO | errno.ENOSYS
    allowed = build_filter(FilterConfig(768, 1024, deny_io_uring=False))
    assert run_filter(allowed, A.NR_io_uring_setup, 8, 0) == ALLOW


def test_foreign_abis_are_killed() -> None:
    assert run_filter(PROG, 5, 0, arch=0x40000003) == KILL  # i386 open via int 0x80
    assert run_filter(PROG, A.X32_SYSCALL_BIT | A.NR_openat, 0) == KILL


def test_everything_else_is_allowed() -> None:
    for nr in (39, 60, 231, 56, 435, 59):  # getpid exit exit_group clone clone3 execve
        assert run_filter(PROG, nr, 0, 0) == ALLOW


def test_fd_window() -> None:
    assert fd_window(1024) == (768, 1024)
    assert fd_window(20000) == (768, 1024)
    assert fd_window(256) == (192, 256)
