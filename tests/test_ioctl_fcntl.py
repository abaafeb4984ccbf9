"""``Process.ioctl`` takes its argument as ``fcntl.ioctl`` does: each argument kind is
called on a real pipe with FIONREAD (the kernel writes the byte count into an int) and
on the model with IOMMU_IOAS_ALLOC (the model writes the new IOAS id), and the two must
agree on the return type, on whether the caller's object changed and on Python's own
errors."""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import struct
import termios
from collections.abc import Callable, Iterator

import pytest

from iommulab import Machine, Process
from iommulab.iommufd import uapi as iu
from iommulab.syscall.ioctlarg import IOCTL_BUFSZ
from iommulab.vfio import uapi as vu
from tests.helpers import expect_errno

#: IOAS_ALLOC's struct (size, flags, out_ioas_id); its first word is also FIONREAD's int
_ALLOC = iu.IOAS_ALLOC.pack(12, 0, 0)
_PENDING = b"hello"  # what the pipe holds: FIONREAD answers 5


@pytest.fixture
def pipe() -> Iterator[int]:
    r, w = os.pipe()
    os.write(w, _PENDING)
    yield r
    os.close(r)
    os.close(w)


@pytest.fixture
def model() -> Iterator[tuple[Process, int]]:
    m = Machine("mock", ram="256M")
    p = m.spawn_process(memlock_limit="16M")
    yield p, p.open("/dev/iommu")
    p.exit()
    assert m.mem.frames.free_frames == m.mem.frames.total_frames - m.mem.iommu_pages


class _Ctypes(ctypes.Structure):
    """Three u32 words: a ctypes object is a writable buffer (a test's own container,
    not a uAPI layout)."""

    _fields_ = [("w", ctypes.c_uint32 * 3)]


def _ctypes(data: bytes) -> _Ctypes:
    return _Ctypes.from_buffer_copy(data)


#: each argument kind fcntl takes a buffer as, built from the same 12 bytes
KINDS: dict[str, Callable[[bytes], object]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": lambda b: memoryview(bytearray(b)),
    "readonly memoryview": lambda b: memoryview(bytes(b)),
    "array": lambda b: array.array("I", b),
    "ctypes": _ctypes,
    "str": lambda b: b.decode("latin-1"),
}


def _content(obj: object) -> bytes:
    return obj.encode("latin-1") if isinstance(obj, str) else bytes(memoryview(obj))  # type: ignore[arg-type]


@pytest.mark.parametrize("mutate", [True, False])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_argument_kind_returns_and_writes_back_as_fcntl_does(
        kind: str, mutate: bool, pipe: int, model: tuple[Process, int]) -> None:
    p, fd = model
    # a str is taken as its UTF-8 bytes (fcntl's s*): these 12 bytes are ASCII
    real_arg, model_arg = KINDS[kind](bytes(12)), KINDS[kind](_ALLOC)
    real = fcntl.ioctl(pipe, termios.FIONREAD, real_arg, mutate)  # type: ignore[call-overload]
    got = p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, model_arg, mutate)  # type: ignore[call-overload]
    assert type(got) is type(real)
    # what the kernel wrote: FIONREAD's count in the first word, the IOAS id in the third
    real_out = real if isinstance(real, bytes) else _content(real_arg)
    model_out = got if isinstance(got, bytes) else _content(model_arg)
    assert struct.unpack_from("<i", real_out)[0] == len(_PENDING)
    assert iu.IOAS_ALLOC.unpack(model_out)[2] == 1
    in_place = isinstance(real, int)
    assert (_content(real_arg)[:4] == struct.pack("<i", 5)) == in_place
    assert (_content(model_arg) == model_out) == in_place
    if in_place:
        assert real == 0 and got == 0  # the ioctl's own return value


def test_a_mutable_buffer_past_1024_bytes_is_passed_by_address(
        pipe: int, model: tuple[Process, int]) -> None:
    """mutate: no copy, no limit; the model's struct has a zero tail (iommufd's size
    rules accept it)."""
    p, fd = model
    real = bytearray(IOCTL_BUFSZ + 100)
    assert fcntl.ioctl(pipe, termios.FIONREAD, real) == 0 and real[:4] == b"\5\0\0\0"
    arg = bytearray(struct.pack("<I", IOCTL_BUFSZ + 100) + bytes(IOCTL_BUFSZ + 96))
    assert p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, arg) == 0
    assert iu.IOAS_ALLOC.unpack_from(arg)[2] == 1


@pytest.mark.parametrize("arg, mutate", [
    (bytes(IOCTL_BUFSZ + 1), True),
    ("x" * (IOCTL_BUFSZ + 1), True),
    (memoryview(bytes(IOCTL_BUFSZ + 1)), True),
    (bytearray(IOCTL_BUFSZ + 1), False),
    (1 << 31, True),
    (-(1 << 31) - 1, True),
    (1.5, True),
    (None, True),
    (memoryview(bytearray(24))[::2], True),  # not contiguous: no buffer fcntl takes
])
def test_python_errors_are_fcntls_and_come_before_the_call(
        arg: object, mutate: bool, pipe: int, model: tuple[Process, int]) -> None:
    p, fd = model
    with pytest.raises(Exception) as real:
        fcntl.ioctl(pipe, termios.FIONREAD, arg, mutate)  # type: ignore[call-overload]
    with pytest.raises(Exception) as got:
        p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, arg, mutate)  # type: ignore[call-overload]
    assert type(got.value) is type(real.value)
    if not isinstance(arg, float | type(None) | memoryview):  # CPython's own wording
        assert str(got.value) == str(real.value)
    # nothing reached the model: the next IOAS is still the first
    out = bytearray(_ALLOC)
    p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, out)
    assert iu.IOAS_ALLOC.unpack(out)[2] == 1


def test_a_str_or_bytes_argument_has_fcntls_nul_after_it() -> None:
    """The copy fcntl makes ends in a NUL, so a device name passed without one still
    names the device; the result is the bytes, so the new fd is known only by number
    (the lowest free), as with the real call."""
    m = Machine("x86-vtd", ram="256M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(memlock_limit="16M")
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, vu.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1v2_IOMMU)
    assert p.ioctl(g, vu.VFIO_GROUP_GET_DEVICE_FD, "0000:00:02.0") == b"0000:00:02.0"
    assert g + 1 in p.files
    p.close(g + 1)
    dfd = p.ioctl(g, vu.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:02.0"))
    assert dfd == g + 1
    expect_errno(errno.ENODEV, p.ioctl, g, vu.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:09.0")
    p.exit()


def test_a_failed_call_with_mutate_still_copies_back(model: tuple[Process, int]) -> None:
    """fcntl copies its stack buffer back before it looks at the return value, so what
    the kernel wrote before failing reaches the caller: the compat container's UNMAP_DMA
    of part of a mapping writes the size unmapped (0), then fails ENOENT
    (``iommufd_vfio_unmap_dma``)."""
    p, fd = model
    out = bytearray(_ALLOC)
    p.ioctl(fd, iu.IOMMU_IOAS_ALLOC, out)
    ioas = iu.IOAS_ALLOC.unpack(out)[2]
    p.ioctl(fd, iu.IOMMU_VFIO_IOAS,
            bytearray(iu.VFIO_IOAS.pack(iu.VFIO_IOAS.size, ioas, iu.IOMMU_VFIO_IOAS_SET, 0)))
    p.ioctl(fd, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1v2_IOMMU)
    va = p.mmap(8192, populate=True)
    p.ioctl(fd, vu.VFIO_IOMMU_MAP_DMA, bytearray(vu.DMA_MAP.pack(32, 3, va, 1 << 24, 8192)))
    unmap = bytearray(vu.DMA_UNMAP.pack(24, 0, 1 << 24, 4096))
    expect_errno(errno.ENOENT, p.ioctl, fd, vu.VFIO_IOMMU_UNMAP_DMA, unmap)
    assert vu.DMA_UNMAP.unpack(unmap)[3] == 0
    frozen = bytes(unmap[:16]) + struct.pack("<Q", 4096)
    expect_errno(errno.ENOENT, p.ioctl, fd, vu.VFIO_IOMMU_UNMAP_DMA, frozen)
    assert vu.DMA_UNMAP.unpack(frozen)[3] == 4096  # bytes are never written
    assert p.ioctl(fd, vu.VFIO_IOMMU_UNMAP_DMA,
                   bytearray(vu.DMA_UNMAP.pack(24, 0, 1 << 24, 8192))) == 0


def test_the_request_is_an_unsigned_int_and_an_int_argument_its_value(
        model: tuple[Process, int]) -> None:
    """``SYSCALL_DEFINE3(ioctl)`` takes ``unsigned int cmd``; an int argument is the
    value (CHECK_EXTENSION's extension number)."""
    p, fd = model
    out = bytearray(_ALLOC)
    assert p.ioctl(fd, iu.IOMMU_IOAS_ALLOC | (1 << 32), out) == 0
    assert p.ioctl(fd, vu.VFIO_CHECK_EXTENSION, vu.VFIO_TYPE1v2_IOMMU) == 1
    assert p.ioctl(fd, vu.VFIO_CHECK_EXTENSION, True) == 1  # VFIO_TYPE1_IOMMU; an index
    expect_errno(errno.EBADF, p.ioctl, 1000, vu.VFIO_CHECK_EXTENSION, 1)
    with pytest.raises(ValueError, match="negative"):
        p.ioctl(-1, vu.VFIO_CHECK_EXTENSION, 1)
    with pytest.raises(ValueError, match="negative"):
        fcntl.ioctl(-1, termios.FIONREAD, 0)


def test_sys_ioctl_is_the_syscall_without_fcntls_rules(model: tuple[Process, int]) -> None:
    """The door the fuzzer and C-like callers use: any unsigned long value, EFAULT where
    a struct was wanted."""
    p, fd = model
    expect_errno(errno.EFAULT, p.sys_ioctl, fd, iu.IOMMU_IOAS_ALLOC, 1 << 40)
    expect_errno(errno.EBADF, p.sys_ioctl, -1, iu.IOMMU_IOAS_ALLOC, 0)
