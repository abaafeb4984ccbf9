"""include/uapi/linux/vfio.h: request numbers, flags and struct layouts (x86_64).

Layouts are ``struct`` formats of the little-endian x86_64 ABI; each
struct's ``minsz`` is ``offsetofend`` of the field the kernel names.
"""

from __future__ import annotations

import struct

VFIO_API_VERSION = 0
VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(nr: int) -> int:
    """``_IO(VFIO_TYPE, VFIO_BASE + nr)``: no size or direction bits."""
    return (VFIO_TYPE << 8) | (VFIO_BASE + nr)


VFIO_GET_API_VERSION = _io(0)
VFIO_CHECK_EXTENSION = _io(1)
VFIO_SET_IOMMU = _io(2)
VFIO_GROUP_GET_STATUS = _io(3)
VFIO_GROUP_SET_CONTAINER = _io(4)
VFIO_GROUP_UNSET_CONTAINER = _io(5)
VFIO_GROUP_GET_DEVICE_FD = _io(6)
VFIO_DEVICE_GET_INFO = _io(7)
VFIO_DEVICE_GET_REGION_INFO = _io(8)
VFIO_DEVICE_GET_IRQ_INFO = _io(9)
VFIO_DEVICE_SET_IRQS = _io(10)
VFIO_DEVICE_RESET = _io(11)
VFIO_IOMMU_GET_INFO = _io(12)
VFIO_IOMMU_MAP_DMA = _io(13)
VFIO_IOMMU_UNMAP_DMA = _io(14)
VFIO_IOMMU_DIRTY_PAGES = _io(17)
VFIO_DEVICE_BIND_IOMMUFD = _io(18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _io(20)
# the numbers of VFIO_IOMMU_GET_INFO and MAP_DMA, on a device fd (defined after them, so
# tables keyed by number keep the container's names)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _io(12)
VFIO_DEVICE_PCI_HOT_RESET = _io(13)

# extensions / IOMMU types
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6  # __VFIO_RESERVED_TYPE1_NESTING_IOMMU, opened as v2
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_NUM_REGIONS = 9
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7
VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_PCI_OFFSET_SHIFT = 40  # vfio-pci: region index in the top bits of the file offset
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1

DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1  # INT_MAX


def DIRTY_BITMAP_BYTES(n: int) -> int:
    """``ALIGN(n, 64) / 8``."""
    return ((n + 63) & ~63) // 8


DIRTY_BITMAP_SIZE_MAX = DIRTY_BITMAP_BYTES(DIRTY_BITMAP_PAGES_MAX)

# struct layouts
GROUP_STATUS = struct.Struct("<II")  # argsz, flags
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, vaddr, iova, size
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, iova, size (data[] follows)
BITMAP = struct.Struct("<QQQ")  # pgsize, size (bytes), data (user pointer)
IOMMU_INFO = struct.Struct("<IIQII")  # argsz, flags, iova_pgsizes, cap_offset, pad
IOMMU_INFO_MINSZ = 16  # offsetofend(iova_pgsizes)
CAP_HEADER = struct.Struct("<HHI")  # id, version, next
CAP_MIGRATION = struct.Struct("<HHIIIQQ")  # header, flags, (pad), pgsize_bitmap, max size
CAP_DMA_AVAIL = struct.Struct("<HHII")  # header, avail
CAP_IOVA_RANGE = struct.Struct("<HHIII")  # header, nr_iovas, reserved
IOVA_RANGE = struct.Struct("<QQ")  # start, end (inclusive)
DIRTY_BITMAP = struct.Struct("<II")  # argsz, flags (data[] follows)
DIRTY_BITMAP_GET = struct.Struct("<QQQQQ")  # iova, size, then a vfio_bitmap
DEVICE_INFO = struct.Struct("<IIIIII")  # argsz, flags, num_regions, num_irqs, cap_offset, pad
DEVICE_INFO_MINSZ = 16  # offsetofend(num_irqs)
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count (minsz: all of it)
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count (minsz), then data[]
HOT_RESET_INFO = struct.Struct("<III")  # argsz, flags, count (minsz), then devices[]
HOT_RESET = struct.Struct("<III")  # argsz, flags, count (minsz), then group_fds[]

# the device cdev (/dev/vfio/devices/vfioN); minsz is offsetofend of the field named
BIND_IOMMUFD = struct.Struct("<IIiI")  # argsz, flags, iommufd, out_devid (minsz, 6.12's struct)
BIND_IOMMUFD_TOKEN = struct.Struct("<IIiIQ")  # 6.17+: ..., token_uuid_ptr
ATTACH_IOMMUFD_PT = struct.Struct("<IIII")  # argsz, flags, pt_id, pasid (6.15+)
ATTACH_IOMMUFD_PT_MINSZ = 12  # offsetofend(pt_id), 6.12's struct
DETACH_IOMMUFD_PT = struct.Struct("<III")  # argsz, flags, pasid (6.15+)
DETACH_IOMMUFD_PT_MINSZ = 8  # offsetofend(flags), 6.12's struct
VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0  # 6.17+
VFIO_DEVICE_ATTACH_PASID = 1 << 0  # 6.15+
VFIO_DEVICE_DETACH_PASID = 1 << 0  # 6.15+
