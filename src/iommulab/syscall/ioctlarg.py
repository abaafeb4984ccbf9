"""The argument of ``ioctl`` as Python's ``fcntl.ioctl`` hands it to the kernel, and
what it gives back (CPython ``Modules/fcntlmodule.c``, ``fcntl_ioctl_impl``).

:func:`fcntl_ioctl` takes the call to make (the model's ``file.ioctl``) and the Python
argument, and follows ``fcntl_ioctl_impl``'s three tries in its order:

1. a writable C-contiguous buffer (``w*``: ``bytearray``, writable ``memoryview``,
   ``array.array``, ctypes objects, ``mmap``): with ``mutate_flag`` true it is, in
   effect, passed to the kernel (up to IOCTL_BUFSZ bytes through a copy on the stack
   that is copied back even when the call fails, larger ones by their own address) and
   the result is the call's int; with ``mutate_flag`` false it is copied (ValueError
   past IOCTL_BUFSZ) and the result is new ``bytes`` of what the kernel left in the copy;
2. any other contiguous buffer or a ``str`` (``s*``: ``bytes``, a read-only
   ``memoryview``, a ``str`` as UTF-8): copied (ValueError past IOCTL_BUFSZ), the
   result is new ``bytes``;
3. an int (``i``: a C int, OverflowError outside it; TypeError for anything else),
   passed as the value; the result is the call's int.

Every copy on the stack has a NUL after the argument's bytes (``buf[len] = '\\0'``),
so the kernel may read one byte past them; a buffer passed by its own address has none.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import SupportsIndex

__all__ = ["IOCTL_BUFSZ", "fcntl_ioctl"]

#: fcntl_ioctl_impl's stack buffer: the most an argument passed by copy may have
IOCTL_BUFSZ = 1024

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_BAD_ARG = ("ioctl requires a file or file descriptor, an integer and optionally an "
            "integer or buffer argument")


def _contiguous(arg: object) -> memoryview | None:
    """A byte view of ``arg`` when it has a C-contiguous buffer (``s*``/``w*``)."""
    try:
        view = memoryview(arg)  # type: ignore[arg-type]
    except TypeError:
        return None
    if not view.c_contiguous:
        view.release()
        return None
    return view.cast("B")  # a byte view of any format and shape (a ctypes struct's is 0-d)


def _copy(view: memoryview) -> bytearray:
    """The stack buffer: the argument's bytes and a NUL (ValueError past IOCTL_BUFSZ)."""
    if view.nbytes > IOCTL_BUFSZ:
        raise ValueError("ioctl string arg too long")
    return bytearray(view) + b"\0"


def fcntl_ioctl(call: Callable[[int | bytearray], int], arg: object,
                mutate_flag: bool = True) -> int | bytes:
    """``fcntl.ioctl``'s handling of ``arg`` around ``call`` (the ioctl itself, which
    raises OSError on failure): see the module docstring. Python's own errors (TypeError,
    OverflowError, ValueError) come before the call is made. O(len(arg))."""
    if isinstance(arg, str):  # s*: a str is its UTF-8 bytes
        arg = arg.encode()
    view = _contiguous(arg)
    if view is not None:
        with view:
            if not view.readonly and mutate_flag:  # w*, mutate
                buf = _copy(view) if view.nbytes <= IOCTL_BUFSZ else bytearray(view)
                try:
                    return call(buf)
                finally:  # copied back whether or not the call failed
                    view[:] = buf[:view.nbytes]
            buf = _copy(view)  # w* without mutate, or s*
            call(buf)
            return bytes(buf[:view.nbytes])
    if not isinstance(arg, SupportsIndex):
        raise TypeError(_BAD_ARG)
    value = operator.index(arg)
    if value > _INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if value < _INT_MIN:
        raise OverflowError("signed integer is less than minimum")
    return call(value)
