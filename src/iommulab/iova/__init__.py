"""The IOVA allocator (drivers/iommu/iova.c): ranges in a sorted tree plus per-CPU caches."""

from .domain import IOVA_ANCHOR, Iova, IovaDomain, IovaStats
from .rcache import IOVA_DEPOT_DELAY_MS, IOVA_MAG_SIZE, IOVA_RANGE_CACHE_MAX_SIZE

__all__ = [
    "IOVA_ANCHOR",
    "IOVA_DEPOT_DELAY_MS",
    "IOVA_MAG_SIZE",
    "IOVA_RANGE_CACHE_MAX_SIZE",
    "Iova",
    "IovaDomain",
    "IovaStats",
]
