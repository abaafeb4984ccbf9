"""iommulab: an executable, faithful model of the Linux IOMMU stack."""

from . import errors, sizes
from .prot import Prot

__version__ = "0.1.0"

__all__ = ["Prot", "__version__", "errors", "sizes"]
