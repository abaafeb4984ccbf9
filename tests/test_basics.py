"""Prot values, errno-carrying errors and size parsing."""

import errno

import pytest

from iommulab import Prot, errors
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, parse_size


def test_prot_values_are_the_kernels() -> None:
    # include/linux/iommu.h
    assert (Prot.READ, Prot.WRITE, Prot.CACHE, Prot.NOEXEC, Prot.MMIO, Prot.PRIV) == (
        1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize(("cls", "err"), [
    (errors.InvalidArgument, errno.EINVAL),
    (errors.AlreadyExists, errno.EEXIST),
    (errors.OutOfRange, errno.ERANGE),
    (errors.OutOfMemory, errno.ENOMEM),
    (errors.NotSupported, errno.EOPNOTSUPP),
    (errors.AddressInUse, errno.EADDRINUSE),
    (errors.Busy, errno.EBUSY),
    (errors.BadAddress, errno.EFAULT),
])
def test_errors_are_oserrors_with_the_errno(cls: type[errors.KernelError], err: int) -> None:
    e = cls("pgsize must be one of 0x40201000, not 0x3000")
    assert isinstance(e, OSError)
    assert e.errno == err
    assert "0x3000" in str(e)
    assert errors.kernel_error(err, "x").__class__ is cls


def test_kernel_error_for_an_unlisted_errno() -> None:
    e = errors.kernel_error(errno.ENOTTY, "unknown ioctl 0x1234")
    assert isinstance(e, errors.KernelError) and e.errno == errno.ENOTTY
    assert type(errors.kernel_error(errno.ENOTTY, "again")) is type(e)


@pytest.mark.parametrize(("text", "value"), [
    ("4K", SZ_4K), ("4k", SZ_4K), ("2M", SZ_2M), ("2MiB", SZ_2M), ("64G", 64 * SZ_1G),
    ("1T", 1 << 40), ("4096", 4096), ("0x1000", 0x1000), (" 3 G ", 3 * SZ_1G), (512, 512),
])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "G", "4X", "1.5G", "-4K", "0xZZ"])
def test_parse_size_rejects_naming_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("\\", "\\\\")):
        parse_size(bad)


def test_parse_size_rejects_negative_int() -> None:
    with pytest.raises(ValueError, match="-1"):
        parse_size(-1)
