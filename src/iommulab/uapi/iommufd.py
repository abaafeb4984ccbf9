"""``include/uapi/linux/iommufd.h`` as ctypes types: every struct of the header the model
implements, named and laid out as the header declares it for x86_64, and the command
numbers, flags and enums beside them.

Every command struct starts with ``__u32 size`` (the caller's ``sizeof``). The structs,
members and constants 6.12's header lacks (7.0 has them) are listed in
:data:`NOT_IN_6_12`; ``tests/test_uapi_layout.py`` compiles the header text and checks
every size, offset, member type and number here against it.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from ._base import UapiStruct, UapiUnion, ioc_io

IOMMUFD_TYPE = ord(";")

# ---- command numbers (the header's anonymous enum) ------------------------------------------
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE = 0x8F
IOMMUFD_CMD_VIOMMU_ALLOC = 0x90
IOMMUFD_CMD_VDEVICE_ALLOC = 0x91
IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92
IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93
IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94

IOMMU_DESTROY = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_ALLOW_IOVAS = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_COPY = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_IOVA_RANGES = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_MAP = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_UNMAP = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
IOMMU_IOAS_MAP_FILE = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
IOMMU_VIOMMU_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
IOMMU_VDEVICE_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
IOMMU_IOAS_CHANGE_PROCESS = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)
IOMMU_VEVENTQ_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
IOMMU_HW_QUEUE_ALLOC = ioc_io(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)

# ---- flags and enums ---------------------------------------------------------------------
# enum iommufd_ioas_map_flags
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2
# enum iommufd_option, enum iommufd_option_ops
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1
# enum iommufd_vfio_ioas_op
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2
# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3
# enum iommu_hwpt_vtd_s1_flags
IOMMU_VTD_S1_SRE = 1 << 0
IOMMU_VTD_S1_EAFE = 1 << 1
IOMMU_VTD_S1_WPE = 1 << 2
# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_DATA_ARM_SMMUV3 = 2
# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0
# enum iommu_hw_info_type
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_DEFAULT = 0  # an input type: what the driver reports by default
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
# enum iommufd_hw_capabilities
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3
# enum iommufd_hw_info_flags
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0
# enum iommufd_hwpt_set_dirty_tracking_flags, enum iommufd_hwpt_get_dirty_bitmap_flags
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1
# enum iommu_hwpt_invalidate_data_type, enum iommu_hwpt_vtd_s1_invalidate_flags
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0
# enum iommu_hwpt_pgfault_flags, enum iommu_hwpt_pgfault_perm
IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1
IOMMU_PGFAULT_PERM_READ = 1 << 0
IOMMU_PGFAULT_PERM_WRITE = 1 << 1
IOMMU_PGFAULT_PERM_EXEC = 1 << 2
IOMMU_PGFAULT_PERM_PRIV = 1 << 3
# enum iommufd_page_response_code
IOMMUFD_PAGE_RESP_SUCCESS = 0
IOMMUFD_PAGE_RESP_INVALID = 1
# enum iommu_viommu_type
IOMMU_VIOMMU_TYPE_DEFAULT = 0
IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1
# enum iommu_veventq_flag
IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1 << 0
# enum iommu_veventq_type
IOMMU_VEVENTQ_TYPE_DEFAULT = 0
IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1


# ---- structs -------------------------------------------------------------------------------
class iommu_destroy(UapiStruct):
    """``struct iommu_destroy``: IOMMU_DESTROY."""

    _fields_ = (("size", c_uint32), ("id", c_uint32))
    size: int
    id: int


class iommu_ioas_alloc(UapiStruct):
    """``struct iommu_ioas_alloc``: IOMMU_IOAS_ALLOC."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("out_ioas_id", c_uint32))
    size: int
    flags: int
    out_ioas_id: int


class iommu_iova_range(UapiStruct):
    """``struct iommu_iova_range``: ``[start, last]``, both inclusive."""

    _fields_ = (("start", c_uint64), ("last", c_uint64))
    start: int
    last: int


class iommu_ioas_iova_ranges(UapiStruct):
    """``struct iommu_ioas_iova_ranges``: IOMMU_IOAS_IOVA_RANGES; ``allowed_iovas``
    points at ``num_iovas`` :class:`iommu_iova_range`."""

    _fields_ = (("size", c_uint32), ("ioas_id", c_uint32), ("num_iovas", c_uint32),
                ("__reserved", c_uint32), ("allowed_iovas", c_uint64),
                ("out_iova_alignment", c_uint64))
    size: int
    ioas_id: int
    num_iovas: int
    allowed_iovas: int
    out_iova_alignment: int


class iommu_ioas_allow_iovas(UapiStruct):
    """``struct iommu_ioas_allow_iovas``: IOMMU_IOAS_ALLOW_IOVAS."""

    _fields_ = (("size", c_uint32), ("ioas_id", c_uint32), ("num_iovas", c_uint32),
                ("__reserved", c_uint32), ("allowed_iovas", c_uint64))
    size: int
    ioas_id: int
    num_iovas: int
    allowed_iovas: int


class iommu_ioas_map(UapiStruct):
    """``struct iommu_ioas_map``: IOMMU_IOAS_MAP."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("ioas_id", c_uint32),
                ("__reserved", c_uint32), ("user_va", c_uint64), ("length", c_uint64),
                ("iova", c_uint64))
    size: int
    flags: int
    ioas_id: int
    user_va: int
    length: int
    iova: int


class iommu_ioas_map_file(UapiStruct):
    """``struct iommu_ioas_map_file``: IOMMU_IOAS_MAP_FILE (not in 6.12)."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("ioas_id", c_uint32),
                ("fd", c_int32), ("start", c_uint64), ("length", c_uint64),
                ("iova", c_uint64))
    size: int
    flags: int
    ioas_id: int
    fd: int
    start: int
    length: int
    iova: int


class iommu_ioas_copy(UapiStruct):
    """``struct iommu_ioas_copy``: IOMMU_IOAS_COPY."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("dst_ioas_id", c_uint32),
                ("src_ioas_id", c_uint32), ("length", c_uint64), ("dst_iova", c_uint64),
                ("src_iova", c_uint64))
    size: int
    flags: int
    dst_ioas_id: int
    src_ioas_id: int
    length: int
    dst_iova: int
    src_iova: int


class iommu_ioas_unmap(UapiStruct):
    """``struct iommu_ioas_unmap``: IOMMU_IOAS_UNMAP."""

    _fields_ = (("size", c_uint32), ("ioas_id", c_uint32), ("iova", c_uint64),
                ("length", c_uint64))
    size: int
    ioas_id: int
    iova: int
    length: int


class iommu_option(UapiStruct):
    """``struct iommu_option``: IOMMU_OPTION."""

    _fields_ = (("size", c_uint32), ("option_id", c_uint32), ("op", c_uint16),
                ("__reserved", c_uint16), ("object_id", c_uint32), ("val64", c_uint64))
    size: int
    option_id: int
    op: int
    object_id: int
    val64: int


class iommu_vfio_ioas(UapiStruct):
    """``struct iommu_vfio_ioas``: IOMMU_VFIO_IOAS."""

    _fields_ = (("size", c_uint32), ("ioas_id", c_uint32), ("op", c_uint16),
                ("__reserved", c_uint16))
    size: int
    ioas_id: int
    op: int


class iommu_hwpt_vtd_s1(UapiStruct):
    """``struct iommu_hwpt_vtd_s1``: IOMMU_HWPT_DATA_VTD_S1's user data."""

    _fields_ = (("flags", c_uint64), ("pgtbl_addr", c_uint64), ("addr_width", c_uint32),
                ("__reserved", c_uint32))
    flags: int
    pgtbl_addr: int
    addr_width: int


class iommu_hwpt_alloc(UapiStruct):
    """``struct iommu_hwpt_alloc``: IOMMU_HWPT_ALLOC."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("dev_id", c_uint32),
                ("pt_id", c_uint32), ("out_hwpt_id", c_uint32), ("__reserved", c_uint32),
                ("data_type", c_uint32), ("data_len", c_uint32), ("data_uptr", c_uint64),
                ("fault_id", c_uint32), ("__reserved2", c_uint32))
    size: int
    flags: int
    dev_id: int
    pt_id: int
    out_hwpt_id: int
    data_type: int
    data_len: int
    data_uptr: int
    fault_id: int


class iommu_hw_info_vtd(UapiStruct):
    """``struct iommu_hw_info_vtd``: IOMMU_HW_INFO_TYPE_INTEL_VTD's data."""

    _fields_ = (("flags", c_uint32), ("__reserved", c_uint32), ("cap_reg", c_uint64),
                ("ecap_reg", c_uint64))
    flags: int
    cap_reg: int
    ecap_reg: int


class iommu_hw_info_arm_smmuv3(UapiStruct):
    """``struct iommu_hw_info_arm_smmuv3``: IOMMU_HW_INFO_TYPE_ARM_SMMUV3's data (not in
    6.12)."""

    _fields_ = (("flags", c_uint32), ("__reserved", c_uint32), ("idr", c_uint32 * 6),
                ("iidr", c_uint32), ("aidr", c_uint32))
    flags: int
    idr: ctypes.Array[c_uint32]
    iidr: int
    aidr: int


class _iommu_hw_info_data_type(UapiUnion):
    _fields_ = (("in_data_type", c_uint32), ("out_data_type", c_uint32))


class iommu_hw_info(UapiStruct):
    """``struct iommu_hw_info``: IOMMU_GET_HW_INFO. 7.0's anonymous union gives
    ``out_data_type`` the input name ``in_data_type`` (with
    IOMMU_HW_INFO_FLAG_INPUT_TYPE); 6.12 has ``out_data_type`` alone."""

    _anonymous_ = ("_data_type",)
    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("dev_id", c_uint32),
                ("data_len", c_uint32), ("data_uptr", c_uint64),
                ("_data_type", _iommu_hw_info_data_type), ("out_max_pasid_log2", c_uint8),
                ("__reserved", c_uint8 * 3), ("out_capabilities", c_uint64))
    size: int
    flags: int
    dev_id: int
    data_len: int
    data_uptr: int
    in_data_type: int
    out_data_type: int
    out_max_pasid_log2: int
    out_capabilities: int


class iommu_hwpt_set_dirty_tracking(UapiStruct):
    """``struct iommu_hwpt_set_dirty_tracking``: IOMMU_HWPT_SET_DIRTY_TRACKING."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("hwpt_id", c_uint32),
                ("__reserved", c_uint32))
    size: int
    flags: int
    hwpt_id: int


class iommu_hwpt_get_dirty_bitmap(UapiStruct):
    """``struct iommu_hwpt_get_dirty_bitmap``: IOMMU_HWPT_GET_DIRTY_BITMAP; ``data`` is
    the address of the bitmap (one bit per ``page_size`` from ``iova``)."""

    _fields_ = (("size", c_uint32), ("hwpt_id", c_uint32), ("flags", c_uint32),
                ("__reserved", c_uint32), ("iova", c_uint64), ("length", c_uint64),
                ("page_size", c_uint64), ("data", c_uint64))
    size: int
    hwpt_id: int
    flags: int
    iova: int
    length: int
    page_size: int
    data: int


class iommu_hwpt_vtd_s1_invalidate(UapiStruct):
    """``struct iommu_hwpt_vtd_s1_invalidate``: one VT-d stage-1 invalidation entry."""

    _fields_ = (("addr", c_uint64), ("npages", c_uint64), ("flags", c_uint32),
                ("__reserved", c_uint32))
    addr: int
    npages: int
    flags: int


class iommu_hwpt_invalidate(UapiStruct):
    """``struct iommu_hwpt_invalidate``: IOMMU_HWPT_INVALIDATE."""

    _fields_ = (("size", c_uint32), ("hwpt_id", c_uint32), ("data_uptr", c_uint64),
                ("data_type", c_uint32), ("entry_len", c_uint32), ("entry_num", c_uint32),
                ("__reserved", c_uint32))
    size: int
    hwpt_id: int
    data_uptr: int
    data_type: int
    entry_len: int
    entry_num: int


class iommu_hwpt_pgfault(UapiStruct):
    """``struct iommu_hwpt_pgfault``: one record read from a fault queue fd."""

    _fields_ = (("flags", c_uint32), ("dev_id", c_uint32), ("pasid", c_uint32),
                ("grpid", c_uint32), ("perm", c_uint32), ("__reserved", c_uint32),
                ("addr", c_uint64), ("length", c_uint32), ("cookie", c_uint32))
    flags: int
    dev_id: int
    pasid: int
    grpid: int
    perm: int
    addr: int
    length: int
    cookie: int


class iommu_hwpt_page_response(UapiStruct):
    """``struct iommu_hwpt_page_response``: one response written to a fault queue fd."""

    _fields_ = (("cookie", c_uint32), ("code", c_uint32))
    cookie: int
    code: int


class iommu_fault_alloc(UapiStruct):
    """``struct iommu_fault_alloc``: IOMMU_FAULT_QUEUE_ALLOC."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("out_fault_id", c_uint32),
                ("out_fault_fd", c_uint32))
    size: int
    flags: int
    out_fault_id: int
    out_fault_fd: int


class iommu_ioas_change_process(UapiStruct):
    """``struct iommu_ioas_change_process``: IOMMU_IOAS_CHANGE_PROCESS (not in 6.12)."""

    _fields_ = (("size", c_uint32), ("__reserved", c_uint32))
    size: int


class iommu_hwpt_arm_smmuv3(UapiStruct):
    """``struct iommu_hwpt_arm_smmuv3``: IOMMU_HWPT_DATA_ARM_SMMUV3's data, the guest's
    STE (two little-endian u64; not in 6.12)."""

    _fields_ = (("ste", c_uint64 * 2),)
    ste: ctypes.Array[c_uint64]


class iommu_viommu_arm_smmuv3_invalidate(UapiStruct):
    """``struct iommu_viommu_arm_smmuv3_invalidate``: one raw 128-bit CMDQ command
    (little-endian) for IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 (not in 6.12)."""

    _fields_ = (("cmd", c_uint64 * 2),)
    cmd: ctypes.Array[c_uint64]


class iommu_viommu_alloc(UapiStruct):
    """``struct iommu_viommu_alloc``: IOMMU_VIOMMU_ALLOC (not in 6.12)."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("type", c_uint32),
                ("dev_id", c_uint32), ("hwpt_id", c_uint32), ("out_viommu_id", c_uint32),
                ("data_len", c_uint32), ("__reserved", c_uint32), ("data_uptr", c_uint64))
    size: int
    flags: int
    type: int
    dev_id: int
    hwpt_id: int
    out_viommu_id: int
    data_len: int
    data_uptr: int


class iommu_vdevice_alloc(UapiStruct):
    """``struct iommu_vdevice_alloc``: IOMMU_VDEVICE_ALLOC (not in 6.12)."""

    _fields_ = (("size", c_uint32), ("viommu_id", c_uint32), ("dev_id", c_uint32),
                ("out_vdevice_id", c_uint32), ("virt_id", c_uint64))
    size: int
    viommu_id: int
    dev_id: int
    out_vdevice_id: int
    virt_id: int


class iommufd_vevent_header(UapiStruct):
    """``struct iommufd_vevent_header``: what a vEVENTQ fd's read gives before each
    record (not in 6.12)."""

    _fields_ = (("flags", c_uint32), ("sequence", c_uint32))
    flags: int
    sequence: int


class iommu_vevent_arm_smmuv3(UapiStruct):
    """``struct iommu_vevent_arm_smmuv3``: a 256-bit SMMUv3 event record, little-endian,
    its StreamID the guest's virtual one (not in 6.12)."""

    _fields_ = (("evt", c_uint64 * 4),)
    evt: ctypes.Array[c_uint64]


class iommu_veventq_alloc(UapiStruct):
    """``struct iommu_veventq_alloc``: IOMMU_VEVENTQ_ALLOC (not in 6.12)."""

    _fields_ = (("size", c_uint32), ("flags", c_uint32), ("viommu_id", c_uint32),
                ("type", c_uint32), ("veventq_depth", c_uint32), ("out_veventq_id", c_uint32),
                ("out_veventq_fd", c_uint32), ("__reserved", c_uint32))
    size: int
    flags: int
    viommu_id: int
    type: int
    veventq_depth: int
    out_veventq_id: int
    out_veventq_fd: int


#: Names here that 6.12's header lacks (7.0 has them): structs, ``struct.member``s, constants.
NOT_IN_6_12 = frozenset({
    "iommu_ioas_map_file",
    "iommu_ioas_change_process",
    "iommu_hw_info_arm_smmuv3",
    "iommu_hw_info.in_data_type",
    "IOMMUFD_CMD_IOAS_MAP_FILE",
    "IOMMUFD_CMD_VIOMMU_ALLOC",
    "IOMMUFD_CMD_VDEVICE_ALLOC",
    "IOMMUFD_CMD_IOAS_CHANGE_PROCESS",
    "IOMMUFD_CMD_VEVENTQ_ALLOC",
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_VIOMMU_ALLOC",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_IOAS_CHANGE_PROCESS",
    "IOMMU_VEVENTQ_ALLOC",
    "IOMMU_HWPT_ALLOC_PASID",
    "IOMMU_HW_INFO_TYPE_DEFAULT",
    "IOMMU_HW_INFO_TYPE_ARM_SMMUV3",
    "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED",
    "IOMMU_HW_INFO_FLAG_INPUT_TYPE",
    "IOMMUFD_CMD_HW_QUEUE_ALLOC",
    "IOMMU_HW_QUEUE_ALLOC",
    "IOMMU_HWPT_DATA_ARM_SMMUV3",
    "IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3",
    "IOMMU_VIOMMU_TYPE_DEFAULT",
    "IOMMU_VIOMMU_TYPE_ARM_SMMUV3",
    "IOMMU_VEVENTQ_FLAG_LOST_EVENTS",
    "IOMMU_VEVENTQ_TYPE_DEFAULT",
    "IOMMU_VEVENTQ_TYPE_ARM_SMMUV3",
    "iommu_hwpt_arm_smmuv3",
    "iommu_viommu_arm_smmuv3_invalidate",
    "iommu_viommu_alloc",
    "iommu_vdevice_alloc",
    "iommufd_vevent_header",
    "iommu_vevent_arm_smmuv3",
    "iommu_veventq_alloc",
})

#: Members the header declares as user pointers (none: iommufd passes ``__aligned_u64``).
USER_POINTERS: frozenset[str] = frozenset()

#: The structs, in header order.
STRUCTS: tuple[type[UapiStruct], ...] = (
    iommu_destroy, iommu_ioas_alloc, iommu_iova_range, iommu_ioas_iova_ranges,
    iommu_ioas_allow_iovas, iommu_ioas_map, iommu_ioas_map_file, iommu_ioas_copy,
    iommu_ioas_unmap, iommu_option, iommu_vfio_ioas, iommu_hwpt_vtd_s1, iommu_hwpt_alloc,
    iommu_hw_info_vtd, iommu_hw_info_arm_smmuv3, iommu_hw_info,
    iommu_hwpt_set_dirty_tracking, iommu_hwpt_get_dirty_bitmap, iommu_hwpt_vtd_s1_invalidate,
    iommu_hwpt_invalidate, iommu_hwpt_pgfault, iommu_hwpt_page_response, iommu_fault_alloc,
    iommu_ioas_change_process, iommu_hwpt_arm_smmuv3, iommu_viommu_arm_smmuv3_invalidate,
    iommu_viommu_alloc, iommu_vdevice_alloc, iommufd_vevent_header, iommu_vevent_arm_smmuv3,
    iommu_veventq_alloc,
)
