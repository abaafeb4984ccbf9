"""The file ``memfd_create`` returns (mm/memfd.c): a core file, not a front end's; the
memory behind it is :class:`~iommulab.mem.memfd.MemFd`."""

from __future__ import annotations

from ..mem.memfd import MemFd
from .file import File

__all__ = ["MemFdFile"]


class MemFdFile(File):
    """The fd ``memfd_create`` returns."""

    def __init__(self, memfd: MemFd) -> None:
        self.memfd = memfd

    def release(self) -> None:
        self.memfd.put()
