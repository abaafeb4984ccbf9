"""``include/uapi/linux/vfio.h`` as ctypes types: the structs the model implements, named
and laid out as the header declares them for x86_64, and the request numbers, flags and
indexes beside them.

The structs and members the 6.12 header lacks (added by 7.0) are listed in
:data:`NOT_IN_6_12`; ``tests/test_uapi_layout.py`` compiles the header text and checks
every size, offset, member type and number here against it.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from ._base import UapiStruct, UapiUnion, ioc_io

VFIO_API_VERSION = 0
VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(nr: int) -> int:
    """``_IO(VFIO_TYPE, VFIO_BASE + nr)``."""
    return ioc_io(VFIO_TYPE, VFIO_BASE + nr)


# ---- request numbers --------------------------------------------------------------------
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
VFIO_DEVICE_IOEVENTFD = _io(16)  # on a device fd (not modelled)
VFIO_IOMMU_DIRTY_PAGES = _io(17)
VFIO_DEVICE_BIND_IOMMUFD = _io(18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _io(20)
# on a device fd, the numbers of container requests (after them, so a table keyed by
# number built from this module keeps the container's names)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _io(12)
VFIO_DEVICE_PCI_HOT_RESET = _io(13)
VFIO_DEVICE_QUERY_GFX_PLANE = _io(14)  # not modelled
VFIO_DEVICE_FEATURE = _io(17)  # not modelled: the model answers ENOTTY

# ---- VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU ------------------------------------------------
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6  # 6.12's name; 7.0 reserves the number (opened as v2)
__VFIO_RESERVED_TYPE1_NESTING_IOMMU = 6  # 7.0's name
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

# ---- group, device, regions, irqs ----------------------------------------------------------
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

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
VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL \
    | VFIO_IRQ_SET_DATA_EVENTFD
VFIO_IRQ_SET_ACTION_TYPE_MASK = VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK \
    | VFIO_IRQ_SET_ACTION_TRIGGER

# vfio-pci's region and irq indexes (anonymous enums of the header)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1
VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1

# ---- device features (the model has none; for real kernels) --------------------------------
VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10
VFIO_MIGRATION_STOP_COPY = 1 << 0
VFIO_MIGRATION_P2P = 1 << 1
VFIO_MIGRATION_PRE_COPY = 1 << 2
# enum vfio_device_mig_state
VFIO_DEVICE_STATE_ERROR = 0
VFIO_DEVICE_STATE_STOP = 1
VFIO_DEVICE_STATE_RUNNING = 2
VFIO_DEVICE_STATE_STOP_COPY = 3
VFIO_DEVICE_STATE_RESUMING = 4
VFIO_DEVICE_STATE_RUNNING_P2P = 5
VFIO_DEVICE_STATE_PRE_COPY = 6
VFIO_DEVICE_STATE_PRE_COPY_P2P = 7
VFIO_DEVICE_STATE_NR = 8

# ---- the device cdev (/dev/vfio/devices/vfioN) --------------------------------------------
VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0  # not in 6.12
VFIO_DEVICE_ATTACH_PASID = 1 << 0  # not in 6.12
VFIO_DEVICE_DETACH_PASID = 1 << 0  # not in 6.12

# ---- type1 ---------------------------------------------------------------------------------
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2


# ---- structs -------------------------------------------------------------------------------
class vfio_info_cap_header(UapiStruct):
    """``struct vfio_info_cap_header``: the chain link every info capability starts with;
    ``next`` is the offset of the next one from the start of the info struct (0 ends)."""

    _fields_ = (("id", c_uint16), ("version", c_uint16), ("next", c_uint32))
    id: int
    version: int
    next: int


class vfio_group_status(UapiStruct):
    """``struct vfio_group_status``: VFIO_GROUP_GET_STATUS."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32))
    argsz: int
    flags: int


class vfio_device_info(UapiStruct):
    """``struct vfio_device_info``: VFIO_DEVICE_GET_INFO (``minsz`` ends at ``num_irqs``)."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("num_regions", c_uint32),
                ("num_irqs", c_uint32), ("cap_offset", c_uint32), ("pad", c_uint32))
    argsz: int
    flags: int
    num_regions: int
    num_irqs: int
    cap_offset: int
    pad: int


class vfio_region_info(UapiStruct):
    """``struct vfio_region_info``: VFIO_DEVICE_GET_REGION_INFO."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("index", c_uint32),
                ("cap_offset", c_uint32), ("size", c_uint64), ("offset", c_uint64))
    argsz: int
    flags: int
    index: int
    cap_offset: int
    size: int
    offset: int


class vfio_irq_info(UapiStruct):
    """``struct vfio_irq_info``: VFIO_DEVICE_GET_IRQ_INFO."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("index", c_uint32),
                ("count", c_uint32))
    argsz: int
    flags: int
    index: int
    count: int


class vfio_irq_set(UapiStruct):
    """``struct vfio_irq_set``: VFIO_DEVICE_SET_IRQS; ``data[]`` (bools or eventfds)
    follows in the same buffer."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("index", c_uint32),
                ("start", c_uint32), ("count", c_uint32), ("data", c_uint8 * 0))
    argsz: int
    flags: int
    index: int
    start: int
    count: int
    data: ctypes.Array[c_uint8]


class _vfio_pci_dependent_device_id(UapiUnion):
    _fields_ = (("group_id", c_uint32), ("devid", c_uint32))


class vfio_pci_dependent_device(UapiStruct):
    """``struct vfio_pci_dependent_device``: one entry of the hot-reset info; the
    anonymous union holds ``group_id`` or (cdev, FLAG_DEV_ID) ``devid``."""

    _anonymous_ = ("_id",)
    _fields_ = (("_id", _vfio_pci_dependent_device_id), ("segment", c_uint16),
                ("bus", c_uint8), ("devfn", c_uint8))
    group_id: int
    devid: int
    segment: int
    bus: int
    devfn: int


class vfio_pci_hot_reset_info(UapiStruct):
    """``struct vfio_pci_hot_reset_info``: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO; ``count``
    entries of :class:`vfio_pci_dependent_device` follow."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("count", c_uint32),
                ("devices", vfio_pci_dependent_device * 0))
    argsz: int
    flags: int
    count: int
    devices: ctypes.Array[vfio_pci_dependent_device]


class vfio_pci_hot_reset(UapiStruct):
    """``struct vfio_pci_hot_reset``: VFIO_DEVICE_PCI_HOT_RESET; ``count`` group fds
    follow."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("count", c_uint32),
                ("group_fds", c_int32 * 0))
    argsz: int
    flags: int
    count: int
    group_fds: ctypes.Array[c_int32]


class vfio_device_feature(UapiStruct):
    """``struct vfio_device_feature``: VFIO_DEVICE_FEATURE; the feature's own struct
    follows as ``data[]``."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("data", c_uint8 * 0))
    argsz: int
    flags: int
    data: ctypes.Array[c_uint8]


class vfio_device_feature_migration(UapiStruct):
    """``struct vfio_device_feature_migration``: VFIO_DEVICE_FEATURE_MIGRATION's data."""

    _fields_ = (("flags", c_uint64),)
    flags: int


class vfio_device_feature_mig_state(UapiStruct):
    """``struct vfio_device_feature_mig_state``: VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE's
    data (``device_state`` from enum vfio_device_mig_state)."""

    _fields_ = (("device_state", c_uint32), ("data_fd", c_int32))
    device_state: int
    data_fd: int


class vfio_device_feature_dma_logging_control(UapiStruct):
    """``struct vfio_device_feature_dma_logging_control``: DMA_LOGGING_START's data;
    ``ranges`` points at ``num_ranges`` :class:`vfio_device_feature_dma_logging_range`."""

    _fields_ = (("page_size", c_uint64), ("num_ranges", c_uint32), ("__reserved", c_uint32),
                ("ranges", c_uint64))
    page_size: int
    num_ranges: int
    ranges: int


class vfio_device_feature_dma_logging_range(UapiStruct):
    """``struct vfio_device_feature_dma_logging_range``."""

    _fields_ = (("iova", c_uint64), ("length", c_uint64))
    iova: int
    length: int


class vfio_device_feature_dma_logging_report(UapiStruct):
    """``struct vfio_device_feature_dma_logging_report``: DMA_LOGGING_REPORT's data."""

    _fields_ = (("iova", c_uint64), ("length", c_uint64), ("page_size", c_uint64),
                ("bitmap", c_uint64))
    iova: int
    length: int
    page_size: int
    bitmap: int


class vfio_device_bind_iommufd(UapiStruct):
    """``struct vfio_device_bind_iommufd``: VFIO_DEVICE_BIND_IOMMUFD. 6.12's struct ends
    at ``out_devid`` (its ``minsz``); ``token_uuid_ptr`` is newer (flag
    VFIO_DEVICE_BIND_FLAG_TOKEN)."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("iommufd", c_int32),
                ("out_devid", c_uint32), ("token_uuid_ptr", c_uint64))
    argsz: int
    flags: int
    iommufd: int
    out_devid: int
    token_uuid_ptr: int


class vfio_device_attach_iommufd_pt(UapiStruct):
    """``struct vfio_device_attach_iommufd_pt``: VFIO_DEVICE_ATTACH_IOMMUFD_PT. 6.12's
    struct ends at ``pt_id`` (its ``minsz``); ``pasid`` is newer."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("pt_id", c_uint32),
                ("pasid", c_uint32))
    argsz: int
    flags: int
    pt_id: int
    pasid: int


class vfio_device_detach_iommufd_pt(UapiStruct):
    """``struct vfio_device_detach_iommufd_pt``: VFIO_DEVICE_DETACH_IOMMUFD_PT. 6.12's
    struct ends at ``flags`` (its ``minsz``); ``pasid`` is newer."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("pasid", c_uint32))
    argsz: int
    flags: int
    pasid: int


class vfio_iommu_type1_info(UapiStruct):
    """``struct vfio_iommu_type1_info``: VFIO_IOMMU_GET_INFO (``minsz`` ends at
    ``iova_pgsizes``; capabilities chain from ``cap_offset``)."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("iova_pgsizes", c_uint64),
                ("cap_offset", c_uint32), ("pad", c_uint32))
    argsz: int
    flags: int
    iova_pgsizes: int
    cap_offset: int
    pad: int


class vfio_iova_range(UapiStruct):
    """``struct vfio_iova_range``: ``[start, end]``, both inclusive."""

    _fields_ = (("start", c_uint64), ("end", c_uint64))
    start: int
    end: int


class vfio_iommu_type1_info_cap_iova_range(UapiStruct):
    """``struct vfio_iommu_type1_info_cap_iova_range``: ``nr_iovas`` ranges follow."""

    _fields_ = (("header", vfio_info_cap_header), ("nr_iovas", c_uint32),
                ("reserved", c_uint32), ("iova_ranges", vfio_iova_range * 0))
    header: vfio_info_cap_header
    nr_iovas: int
    reserved: int
    iova_ranges: ctypes.Array[vfio_iova_range]


class vfio_iommu_type1_info_cap_migration(UapiStruct):
    """``struct vfio_iommu_type1_info_cap_migration`` (4 bytes of padding after
    ``flags``: ``__u64`` is 8-aligned on x86_64)."""

    _fields_ = (("header", vfio_info_cap_header), ("flags", c_uint32),
                ("pgsize_bitmap", c_uint64), ("max_dirty_bitmap_size", c_uint64))
    header: vfio_info_cap_header
    flags: int
    pgsize_bitmap: int
    max_dirty_bitmap_size: int


class vfio_iommu_type1_info_dma_avail(UapiStruct):
    """``struct vfio_iommu_type1_info_dma_avail``."""

    _fields_ = (("header", vfio_info_cap_header), ("avail", c_uint32))
    header: vfio_info_cap_header
    avail: int


class vfio_iommu_type1_dma_map(UapiStruct):
    """``struct vfio_iommu_type1_dma_map``: VFIO_IOMMU_MAP_DMA."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("vaddr", c_uint64),
                ("iova", c_uint64), ("size", c_uint64))
    argsz: int
    flags: int
    vaddr: int
    iova: int
    size: int


class vfio_bitmap(UapiStruct):
    """``struct vfio_bitmap``: ``data`` is a user pointer (``__u64 *``), held as its
    address."""

    _fields_ = (("pgsize", c_uint64), ("size", c_uint64), ("data", c_uint64))
    pgsize: int
    size: int
    data: int


class vfio_iommu_type1_dma_unmap(UapiStruct):
    """``struct vfio_iommu_type1_dma_unmap``: VFIO_IOMMU_UNMAP_DMA; with
    GET_DIRTY_BITMAP a :class:`vfio_bitmap` follows as ``data[]``."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("iova", c_uint64),
                ("size", c_uint64), ("data", c_uint8 * 0))
    argsz: int
    flags: int
    iova: int
    size: int
    data: ctypes.Array[c_uint8]


class vfio_iommu_type1_dirty_bitmap(UapiStruct):
    """``struct vfio_iommu_type1_dirty_bitmap``: VFIO_IOMMU_DIRTY_PAGES; with
    FLAG_GET_BITMAP a :class:`vfio_iommu_type1_dirty_bitmap_get` follows as ``data[]``."""

    _fields_ = (("argsz", c_uint32), ("flags", c_uint32), ("data", c_uint8 * 0))
    argsz: int
    flags: int
    data: ctypes.Array[c_uint8]


class vfio_iommu_type1_dirty_bitmap_get(UapiStruct):
    """``struct vfio_iommu_type1_dirty_bitmap_get``."""

    _fields_ = (("iova", c_uint64), ("size", c_uint64), ("bitmap", vfio_bitmap))
    iova: int
    size: int
    bitmap: vfio_bitmap


#: Names here that 6.12's header lacks (7.0 has them): structs, ``struct.member``s, constants.
NOT_IN_6_12 = frozenset({
    "__VFIO_RESERVED_TYPE1_NESTING_IOMMU",
    "vfio_device_bind_iommufd.token_uuid_ptr",
    "vfio_device_attach_iommufd_pt.pasid",
    "vfio_device_detach_iommufd_pt.pasid",
    "VFIO_DEVICE_BIND_FLAG_TOKEN",
    "VFIO_DEVICE_ATTACH_PASID",
    "VFIO_DEVICE_DETACH_PASID",
})

#: Members the header declares as user pointers (held here as ``__u64`` addresses).
USER_POINTERS = frozenset({"vfio_bitmap.data"})

#: The structs, in header order.
STRUCTS: tuple[type[UapiStruct], ...] = (
    vfio_info_cap_header, vfio_group_status, vfio_device_info, vfio_region_info,
    vfio_irq_info, vfio_irq_set, vfio_pci_dependent_device, vfio_pci_hot_reset_info,
    vfio_pci_hot_reset, vfio_device_feature, vfio_device_bind_iommufd,
    vfio_device_attach_iommufd_pt, vfio_device_detach_iommufd_pt,
    vfio_device_feature_migration, vfio_device_feature_mig_state,
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range, vfio_device_feature_dma_logging_report,
    vfio_iommu_type1_info, vfio_iova_range, vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_cap_migration, vfio_iommu_type1_info_dma_avail,
    vfio_iommu_type1_dma_map, vfio_bitmap, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get,
)
