"""SMMUv3: the hardware model and the arm-smmu-v3 driver that programs it.

``SmmuV3Hw`` is the SMMU as devices see it (registers, queues in memory,
stream table and CD fetches, IOTLB, table walk with HTTU); ``ArmSmmuDevice``
is the kernel driver probing and programming it.
"""

from .domain import (
    HWPT_ALLOC_DIRTY_TRACKING,
    HWPT_ALLOC_NEST_PARENT,
    HWPT_ALLOC_PASID,
    ArmSmmuDomain,
    ArmSmmuMaster,
)
from .driver import ArmSmmuDevice, Feature
from .events import SmmuEvent
from .hw import HwStats, SmmuV3Config, SmmuV3Hw
from .iotlb import Iotlb, IotlbConfig, IotlbEntry, IotlbStats
from .nested import make_nested_domain_ste, validate_vste

__all__ = [
    "HWPT_ALLOC_DIRTY_TRACKING",
    "HWPT_ALLOC_NEST_PARENT",
    "HWPT_ALLOC_PASID",
    "ArmSmmuDevice",
    "ArmSmmuDomain",
    "ArmSmmuMaster",
    "Feature",
    "HwStats",
    "Iotlb",
    "IotlbConfig",
    "IotlbEntry",
    "IotlbStats",
    "SmmuEvent",
    "SmmuV3Config",
    "SmmuV3Hw",
    "make_nested_domain_ste",
    "validate_vste",
]
