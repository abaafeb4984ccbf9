"""Where an ``iopt_pages`` gets pages nobody holds yet: GUP on the source mm
(``pin_user_pages_fast`` / ``_remote``) or ``memfd_pin_folios`` (pages.c ``pfn_reader_user``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, InvalidArgument
from ..mem.memfd import MemFd
from ..mem.mm import MmStruct
from ..mem.pins import pfn_runs
from ..sizes import PAGE_SHIFT
from ..syscall.file import File, fput, get_file

__all__ = ["FileSource", "OtherFileSource", "UserSource"]

I64Array = npt.NDArray[np.int64]


@dataclass
class UserSource:
    """``IOPT_ADDRESS_USER``: pages from ``uptr`` (page aligned) in ``mm``."""

    mm: MmStruct
    uptr: int
    is_file = False

    def pin(self, index: int, n: int, write: bool) -> I64Array:
        """GUP with FOLL_LONGTERM (| FOLL_WRITE): fewer pages at a hole, EFAULT for none,
        EFAULT when the process is gone (``mmget_not_zero`` in ``pfn_reader_user_pin``)."""
        if self.mm.gone:
            raise BadAddress("iommufd: the process that mapped these pages is gone")
        return self.mm.pin_user_pages(self.uptr + (index << PAGE_SHIFT), n, write)

    def pin_runs(self, index: int, n: int, write: bool) -> list[tuple[int, int]]:
        """:meth:`pin` as ``(first pfn, pages)`` runs (no array per page)."""
        if self.mm.gone:
            raise BadAddress("iommufd: the process that mapped these pages is gone")
        return self.mm.pin_user_page_runs(self.uptr + (index << PAGE_SHIFT), n, write)

    def prefault(self, index: int, n: int) -> None:
        """Lab: :meth:`MmStruct.fault_ahead` of the pages a run of GUP calls will pin."""
        if not self.mm.gone:
            self.mm.fault_ahead(self.uptr + (index << PAGE_SHIFT), n, None)

    def unpin(self, pfns: I64Array) -> None:
        self.mm.unpin_user_pages(pfns)

    def unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        self.mm.unpin_user_page_runs(runs)

    def close(self) -> None:
        """The mm is only grabbed (``mmgrab``): nothing to drop in the model."""


@dataclass
class FileSource:
    """``IOPT_ADDRESS_FILE``: pages of ``file`` from byte ``start`` (page aligned); the
    pages hold a reference on the file (:meth:`hold`, once they exist)."""

    file: MemFd
    start: int
    is_file = True

    def hold(self) -> None:
        """``get_file``: the reference :meth:`close` drops."""
        self.file.get()

    def pin(self, index: int, n: int, write: bool) -> I64Array:
        return self.file.pin((self.start >> PAGE_SHIFT) + index, n, write)

    def pin_runs(self, index: int, n: int, write: bool) -> list[tuple[int, int]]:
        return pfn_runs(self.pin(index, n, write))

    def prefault(self, index: int, n: int) -> None:
        """The page cache's pages are found or made by :meth:`pin` itself."""

    def unpin(self, pfns: I64Array) -> None:
        self.file.unpin(pfns)

    def unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        """``unpin_folios`` by runs: :meth:`MemFd.unpin` is the pins' own unpin."""
        self.file.mem.unpin_runs(runs)

    def close(self) -> None:
        self.file.put()


@dataclass
class OtherFileSource:
    """``IOPT_ADDRESS_FILE`` of a file that is neither a memfd nor hugetlbfs (7.0's
    ``iopt_alloc_file_pages`` takes any file): it maps while no domain or access needs
    its pages, and every pin is ``memfd_pin_folios``' EINVAL. The pages hold the file."""

    file: File
    start: int
    is_file = True

    def hold(self) -> None:
        """``get_file``: the reference :meth:`close` drops."""
        get_file(self.file)

    def pin(self, index: int, n: int, write: bool) -> I64Array:
        raise InvalidArgument("memfd_pin_folios: the file is not a memfd or hugetlbfs file")

    def pin_runs(self, index: int, n: int, write: bool) -> list[tuple[int, int]]:
        return pfn_runs(self.pin(index, n, write))

    def prefault(self, index: int, n: int) -> None:
        """Nothing to fault: every pin is refused."""

    def unpin(self, pfns: I64Array) -> None:
        """Nothing was ever pinned."""

    def unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        """Nothing was ever pinned."""

    def close(self) -> None:
        """``fput``."""
        fput(self.file)
