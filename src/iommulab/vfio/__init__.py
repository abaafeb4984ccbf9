"""VFIO: the type1 IOMMU container and the /dev/vfio files (drivers/vfio/)."""

from . import uapi
from .device import DeviceFile
from .files import Container, GroupFile, VfioFile
from .type1 import Type1Report, Type1Stats, VfioDma, VfioIommu, type1_check_extension

__all__ = [
    "Container",
    "DeviceFile",
    "GroupFile",
    "Type1Report",
    "Type1Stats",
    "VfioDma",
    "VfioFile",
    "VfioIommu",
    "type1_check_extension",
    "uapi",
]
