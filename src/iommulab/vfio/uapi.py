"""include/uapi/linux/vfio.h as the model reads it: the request numbers and flags of
:mod:`iommulab.uapi.vfio` (defined once, there) and ``struct`` layouts derived from its
typed structs, so handlers unpack fields by position in one call.

Layouts are ``struct`` formats of the little-endian x86_64 ABI (C padding as pad bytes);
each struct's ``minsz`` is ``offsetofend`` of the field the kernel names.
"""

from __future__ import annotations

from ..uapi import vfio as _h
from ..uapi._base import offsetofend, struct_layout
from ..uapi.vfio import (  # the numbers, flags and enums: defined once, there
    VFIO_API_VERSION,
    VFIO_BASE,
    VFIO_CHECK_EXTENSION,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    VFIO_DEVICE_ATTACH_PASID,
    VFIO_DEVICE_BIND_FLAG_TOKEN,
    VFIO_DEVICE_BIND_IOMMUFD,
    VFIO_DEVICE_DETACH_IOMMUFD_PT,
    VFIO_DEVICE_DETACH_PASID,
    VFIO_DEVICE_FLAGS_PCI,
    VFIO_DEVICE_FLAGS_RESET,
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_PCI_HOT_RESET,
    VFIO_DEVICE_RESET,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DMA_CC_IOMMU,
    VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_VADDR,
    VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    VFIO_DMA_UNMAP_FLAG_VADDR,
    VFIO_EEH,
    VFIO_GET_API_VERSION,
    VFIO_GROUP_FLAGS_CONTAINER_SET,
    VFIO_GROUP_FLAGS_VIABLE,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_IOMMU_DIRTY_PAGES,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
    VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
    VFIO_IOMMU_GET_INFO,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_IOMMU_UNMAP_DMA,
    VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK,
    VFIO_NOIOMMU_IOMMU,
    VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
    VFIO_SET_IOMMU,
    VFIO_SPAPR_TCE_IOMMU,
    VFIO_TYPE,
    VFIO_TYPE1_IOMMU,
    VFIO_TYPE1_NESTING_IOMMU,
    VFIO_UNMAP_ALL,
    VFIO_UPDATE_VADDR,
    VFIO_SPAPR_TCE_v2_IOMMU,
    VFIO_TYPE1v2_IOMMU,
)

__all__ = [  # the header names, re-exported (the layouts below are public too)
    "VFIO_API_VERSION",
    "VFIO_BASE",
    "VFIO_CHECK_EXTENSION",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "VFIO_DEVICE_ATTACH_PASID",
    "VFIO_DEVICE_BIND_FLAG_TOKEN",
    "VFIO_DEVICE_BIND_IOMMUFD",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    "VFIO_DEVICE_DETACH_PASID",
    "VFIO_DEVICE_FLAGS_PCI",
    "VFIO_DEVICE_FLAGS_RESET",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    "VFIO_DEVICE_GET_REGION_INFO",
    "VFIO_DEVICE_PCI_HOT_RESET",
    "VFIO_DEVICE_RESET",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_DMA_CC_IOMMU",
    "VFIO_DMA_MAP_FLAG_READ",
    "VFIO_DMA_MAP_FLAG_VADDR",
    "VFIO_DMA_MAP_FLAG_WRITE",
    "VFIO_DMA_UNMAP_FLAG_ALL",
    "VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP",
    "VFIO_DMA_UNMAP_FLAG_VADDR",
    "VFIO_EEH",
    "VFIO_GET_API_VERSION",
    "VFIO_GROUP_FLAGS_CONTAINER_SET",
    "VFIO_GROUP_FLAGS_VIABLE",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_UNSET_CONTAINER",
    "VFIO_IOMMU_DIRTY_PAGES",
    "VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP",
    "VFIO_IOMMU_DIRTY_PAGES_FLAG_START",
    "VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP",
    "VFIO_IOMMU_GET_INFO",
    "VFIO_IOMMU_INFO_CAPS",
    "VFIO_IOMMU_INFO_PGSIZES",
    "VFIO_IOMMU_MAP_DMA",
    "VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE",
    "VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION",
    "VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL",
    "VFIO_IOMMU_UNMAP_DMA",
    "VFIO_IRQ_INFO_AUTOMASKED",
    "VFIO_IRQ_INFO_EVENTFD",
    "VFIO_IRQ_INFO_MASKABLE",
    "VFIO_IRQ_INFO_NORESIZE",
    "VFIO_IRQ_SET_ACTION_MASK",
    "VFIO_IRQ_SET_ACTION_TRIGGER",
    "VFIO_IRQ_SET_ACTION_TYPE_MASK",
    "VFIO_IRQ_SET_ACTION_UNMASK",
    "VFIO_IRQ_SET_DATA_BOOL",
    "VFIO_IRQ_SET_DATA_EVENTFD",
    "VFIO_IRQ_SET_DATA_NONE",
    "VFIO_IRQ_SET_DATA_TYPE_MASK",
    "VFIO_NOIOMMU_IOMMU",
    "VFIO_PCI_BAR0_REGION_INDEX",
    "VFIO_PCI_CONFIG_REGION_INDEX",
    "VFIO_PCI_ERR_IRQ_INDEX",
    "VFIO_PCI_INTX_IRQ_INDEX",
    "VFIO_PCI_MSIX_IRQ_INDEX",
    "VFIO_PCI_MSI_IRQ_INDEX",
    "VFIO_PCI_NUM_IRQS",
    "VFIO_PCI_NUM_REGIONS",
    "VFIO_PCI_REQ_IRQ_INDEX",
    "VFIO_PCI_ROM_REGION_INDEX",
    "VFIO_PCI_VGA_REGION_INDEX",
    "VFIO_REGION_INFO_FLAG_MMAP",
    "VFIO_REGION_INFO_FLAG_READ",
    "VFIO_REGION_INFO_FLAG_WRITE",
    "VFIO_SET_IOMMU",
    "VFIO_SPAPR_TCE_IOMMU",
    "VFIO_TYPE",
    "VFIO_TYPE1_IOMMU",
    "VFIO_TYPE1_NESTING_IOMMU",
    "VFIO_UNMAP_ALL",
    "VFIO_UPDATE_VADDR",
    "VFIO_SPAPR_TCE_v2_IOMMU",
    "VFIO_TYPE1v2_IOMMU",
]

VFIO_PCI_OFFSET_SHIFT = 40  # vfio-pci: region index in the top bits of the file offset
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1

DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1  # INT_MAX


def DIRTY_BITMAP_BYTES(n: int) -> int:
    """``ALIGN(n, 64) / 8``."""
    return ((n + 63) & ~63) // 8


DIRTY_BITMAP_SIZE_MAX = DIRTY_BITMAP_BYTES(DIRTY_BITMAP_PAGES_MAX)

# struct layouts, derived from the typed structs of :mod:`iommulab.uapi.vfio`
GROUP_STATUS = struct_layout(_h.vfio_group_status)  # argsz, flags
DMA_MAP = struct_layout(_h.vfio_iommu_type1_dma_map)  # argsz, flags, vaddr, iova, size
DMA_UNMAP = struct_layout(_h.vfio_iommu_type1_dma_unmap)  # argsz, flags, iova, size (data[])
BITMAP = struct_layout(_h.vfio_bitmap)  # pgsize, size (bytes), data (user pointer)
IOMMU_INFO = struct_layout(_h.vfio_iommu_type1_info)  # argsz, flags, pgsizes, cap_offset, pad
IOMMU_INFO_MINSZ = offsetofend(_h.vfio_iommu_type1_info, "iova_pgsizes")
CAP_HEADER = struct_layout(_h.vfio_info_cap_header)  # id, version, next
CAP_MIGRATION = struct_layout(_h.vfio_iommu_type1_info_cap_migration)  # header, flags, bitmap, max
CAP_DMA_AVAIL = struct_layout(_h.vfio_iommu_type1_info_dma_avail)  # header, avail
CAP_IOVA_RANGE = struct_layout(_h.vfio_iommu_type1_info_cap_iova_range)  # header, nr, reserved
IOVA_RANGE = struct_layout(_h.vfio_iova_range)  # start, end (inclusive)
DIRTY_BITMAP = struct_layout(_h.vfio_iommu_type1_dirty_bitmap)  # argsz, flags (data[] follows)
DIRTY_BITMAP_GET = struct_layout(_h.vfio_iommu_type1_dirty_bitmap_get)  # iova, size, vfio_bitmap
DEVICE_INFO = struct_layout(_h.vfio_device_info)  # argsz flags num_regions num_irqs cap_offset pad
DEVICE_INFO_MINSZ = offsetofend(_h.vfio_device_info, "num_irqs")
REGION_INFO = struct_layout(_h.vfio_region_info)  # argsz flags index cap_offset size offset
IRQ_INFO = struct_layout(_h.vfio_irq_info)  # argsz, flags, index, count (minsz: all of it)
IRQ_SET = struct_layout(_h.vfio_irq_set)  # argsz, flags, index, start, count (minsz), data[]
HOT_RESET_INFO = struct_layout(_h.vfio_pci_hot_reset_info)  # argsz, flags, count, devices[]
HOT_RESET = struct_layout(_h.vfio_pci_hot_reset)  # argsz, flags, count (minsz), group_fds[]

# the device cdev (/dev/vfio/devices/vfioN); minsz is offsetofend of the field named
BIND_IOMMUFD = struct_layout(_h.vfio_device_bind_iommufd, "out_devid")  # 6.12's struct (minsz)
BIND_IOMMUFD_TOKEN = struct_layout(_h.vfio_device_bind_iommufd)  # 6.17+: ..., token_uuid_ptr
ATTACH_IOMMUFD_PT = struct_layout(_h.vfio_device_attach_iommufd_pt)  # ..., pt_id, pasid (6.15+)
ATTACH_IOMMUFD_PT_MINSZ = offsetofend(_h.vfio_device_attach_iommufd_pt, "pt_id")  # 6.12's
DETACH_IOMMUFD_PT = struct_layout(_h.vfio_device_detach_iommufd_pt)  # ..., pasid (6.15+)
DETACH_IOMMUFD_PT_MINSZ = offsetofend(_h.vfio_device_detach_iommufd_pt, "flags")  # 6.12's
