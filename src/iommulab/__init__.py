"""iommulab: an executable model of the Linux IOMMU stack."""

from . import (
    errors,
    frontends,  # noqa: F401  (registers the device files, once)
    sizes,
)
from .machine import Machine, PciDevice, Process
from .prot import Prot

__version__ = "0.1.0"

__all__ = ["Machine", "PciDevice", "Process", "Prot", "__version__", "errors", "sizes"]
