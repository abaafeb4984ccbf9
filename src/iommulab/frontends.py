"""The front ends' ``module_init`` (lab): the one place that registers the device files
VFIO and iommufd serve into the syscall layer's table (:data:`~.syscall.DEVICE_FILES`).

``iommulab/__init__`` imports this module once, so a ``Machine(...)`` user needs no
call of their own; :mod:`iommulab.machine` does not import it, nor any front end.
The order is the kernel's: iommufd (``/dev/iommu``; ``/dev/vfio/vfio`` under
CONFIG_IOMMUFD_VFIO_CONTAINER), then VFIO (``/dev/vfio/vfio`` otherwise, the group
nodes, the device cdevs).
"""

from __future__ import annotations

from .iommufd.file import iommufd_init
from .syscall.devtable import DEVICE_FILES
from .vfio.cdev import vfio_cdev_init
from .vfio.files import vfio_init

__all__: list[str] = []

iommufd_init(DEVICE_FILES)
vfio_init(DEVICE_FILES)
vfio_cdev_init(DEVICE_FILES)
