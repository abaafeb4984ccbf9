"""The Linux uAPI headers the model implements, as typed Python: :mod:`.vfio`
(``include/uapi/linux/vfio.h``) and :mod:`.iommufd` (``include/uapi/linux/iommufd.h``).

Each struct is a ctypes ``Structure`` named as the kernel names it, with the header's
members and C types, laid out for x86_64; the request numbers, flags and enums keep the
header's names. ``bytes(s)`` is what ``fcntl.ioctl`` (or the model's ``Process.ioctl``)
takes, and ``type(s).from_buffer_copy(b)`` reads an answer back::

    from iommulab.uapi import iommufd as u
    cmd = u.iommu_ioas_map(size=ctypes.sizeof(u.iommu_ioas_map), ioas_id=ioas,
                           flags=u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE,
                           user_va=va, length=n)
    fcntl.ioctl(fd, u.IOMMU_IOAS_MAP, cmd)   # the kernel writes cmd.iova back
"""

from __future__ import annotations

from . import iommufd, vfio
from ._base import UapiStruct, UapiUnion, field_names, ioc_io, offsetofend, struct_layout

__all__ = ["UapiStruct", "UapiUnion", "field_names", "ioc_io", "iommufd", "offsetofend",
           "struct_layout", "vfio"]
