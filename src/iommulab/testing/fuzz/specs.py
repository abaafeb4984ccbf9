"""The structs of every VFIO and iommufd ioctl the model implements, field by field
(include/uapi/linux/vfio.h, iommufd.h, drivers/iommu/iommufd/iommufd_test.h)."""

from __future__ import annotations

import struct

from ...iommufd import selftest as st
from ...iommufd import uapi as iu
from ...uapi._base import ioc_io as _ioc_io
from ...vfio import uapi as vu
from .values import Spec, spec

__all__ = ["IOMMUFD", "TEST", "UNKNOWN_IOMMUFD", "VFIO"]

_S = struct.Struct

VFIO = {s.name: s for s in (
    spec("MAP_DMA", vu.VFIO_IOMMU_MAP_DMA, vu.DMA_MAP,
         "argsz:size flags:flags vaddr:ptr iova:iova size:len"),
    spec("UNMAP_DMA", vu.VFIO_IOMMU_UNMAP_DMA, vu.DMA_UNMAP,
         "argsz:size flags:flags iova:iova size:len"),
    spec("UNMAP_DMA_BITMAP", vu.VFIO_IOMMU_UNMAP_DMA, _S("<IIQQQQQ"),
         "argsz:size flags:flags iova:iova size:len pgsize bsize:len data:ptr"),
    spec("GET_INFO", vu.VFIO_IOMMU_GET_INFO, vu.IOMMU_INFO,
         "argsz:size flags:flags iova_pgsizes cap_offset pad:rsvd", vu.IOMMU_INFO_MINSZ),
    spec("DIRTY_PAGES", vu.VFIO_IOMMU_DIRTY_PAGES, vu.DIRTY_BITMAP, "argsz:size flags:flags"),
    spec("DIRTY_GET_BITMAP", vu.VFIO_IOMMU_DIRTY_PAGES, _S("<IIQQQQQ"),
         "argsz:size flags:flags iova:iova size:len pgsize bsize:len data:ptr"),
    spec("GROUP_STATUS", vu.VFIO_GROUP_GET_STATUS, vu.GROUP_STATUS, "argsz:size flags:flags"),
    spec("DEVICE_INFO", vu.VFIO_DEVICE_GET_INFO, vu.DEVICE_INFO,
         "argsz:size flags:flags num_regions num_irqs cap_offset pad:rsvd",
         vu.DEVICE_INFO_MINSZ),
    spec("REGION_INFO", vu.VFIO_DEVICE_GET_REGION_INFO, vu.REGION_INFO,
         "argsz:size flags:flags index cap_offset size:len offset"),
    spec("IRQ_INFO", vu.VFIO_DEVICE_GET_IRQ_INFO, vu.IRQ_INFO,
         "argsz:size flags:flags index count"),
    spec("SET_IRQS", vu.VFIO_DEVICE_SET_IRQS, vu.IRQ_SET,
         "argsz:size flags:flags index start count:len"),
    spec("HOT_RESET_INFO", vu.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, vu.HOT_RESET_INFO,
         "argsz:size flags:flags count:len"),
    spec("HOT_RESET", vu.VFIO_DEVICE_PCI_HOT_RESET, vu.HOT_RESET,
         "argsz:size flags:flags count:len"),
    spec("BIND", vu.VFIO_DEVICE_BIND_IOMMUFD, vu.BIND_IOMMUFD_TOKEN,
         "argsz:size flags:flags iommufd:fd out_devid token:ptr", vu.BIND_IOMMUFD.size),
    spec("ATTACH", vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT, vu.ATTACH_IOMMUFD_PT,
         "argsz:size flags:flags pt_id:id pasid", vu.ATTACH_IOMMUFD_PT_MINSZ),
    spec("DETACH", vu.VFIO_DEVICE_DETACH_IOMMUFD_PT, vu.DETACH_IOMMUFD_PT,
         "argsz:size flags:flags pasid", vu.DETACH_IOMMUFD_PT_MINSZ),
)}

_IOMMUFD_FIELDS = {
    iu.IOMMU_DESTROY: "size:size id:id",
    iu.IOMMU_IOAS_ALLOC: "size:size flags:flags out_ioas_id",
    iu.IOMMU_IOAS_ALLOW_IOVAS: "size:size ioas_id:id num_iovas:len rsvd:rsvd allowed_iovas:ptr",
    iu.IOMMU_IOAS_COPY: "size:size flags:flags dst_ioas_id:id src_ioas_id:id length:len "
                        "dst_iova:iova src_iova:iova",
    iu.IOMMU_IOAS_IOVA_RANGES: "size:size ioas_id:id num_iovas:len rsvd:rsvd "
                               "allowed_iovas:ptr out_iova_alignment",
    iu.IOMMU_IOAS_MAP: "size:size flags:flags ioas_id:id rsvd:rsvd user_va:ptr length:len "
                       "iova:iova",
    iu.IOMMU_IOAS_MAP_FILE: "size:size flags:flags ioas_id:id fd:fd start length:len iova:iova",
    iu.IOMMU_IOAS_UNMAP: "size:size ioas_id:id iova:iova length:len",
    iu.IOMMU_OPTION: "size:size option_id op rsvd:rsvd object_id:id val64",
    iu.IOMMU_VFIO_IOAS: "size:size ioas_id:id op rsvd:rsvd",
    iu.IOMMU_HWPT_ALLOC: "size:size flags:flags dev_id:id pt_id:id out_hwpt_id rsvd:rsvd "
                         "data_type data_len:len data_uptr:ptr fault_id:id rsvd2:rsvd",
    iu.IOMMU_GET_HW_INFO: "size:size flags:flags dev_id:id data_len:len data_uptr:ptr "
                          "data_type pasid rsvd:rsvd out_capabilities",
    iu.IOMMU_HWPT_SET_DIRTY_TRACKING: "size:size flags:flags hwpt_id:id rsvd:rsvd",
    iu.IOMMU_HWPT_GET_DIRTY_BITMAP: "size:size hwpt_id:id flags:flags rsvd:rsvd iova:iova "
                                    "length:len page_size data:ptr",
    iu.IOMMU_HWPT_INVALIDATE: "size:size hwpt_id:id data_uptr:ptr data_type entry_len:len "
                              "entry_num:len rsvd:rsvd",
    iu.IOMMU_IOAS_CHANGE_PROCESS: "size:size rsvd:rsvd",
    iu.IOMMU_FAULT_QUEUE_ALLOC: "size:size flags:flags out_fault_id out_fault_fd",
    iu.IOMMU_VIOMMU_ALLOC: "size:size flags:flags type dev_id:id hwpt_id:id out_viommu_id "
                           "data_len:len rsvd:rsvd data_uptr:ptr",
    iu.IOMMU_VDEVICE_ALLOC: "size:size viommu_id:id dev_id:id out_vdevice_id virt_id",
    iu.IOMMU_VEVENTQ_ALLOC: "size:size flags:flags viommu_id:id type veventq_depth:len "
                            "out_veventq_id out_veventq_fd rsvd:rsvd",
}

#: request -> Spec of each iommufd command the model's table has (any release).
IOMMUFD = {req: spec(c.name.removeprefix("IOMMU_"), req, c.layout, _IOMMUFD_FIELDS[req],
                     c.min_size)
           for req, c in iu.COMMANDS.items()}

#: iommufd commands the kernel has and the model does not (ENOTTY).
UNKNOWN_IOMMUFD = (_ioc_io(iu.IOMMUFD_TYPE, 0x94),)  # IOMMU_HW_QUEUE_ALLOC

# IOMMU_TEST_CMD: size, op, id, __reserved, a 48-byte union, last (72 bytes).
_TEST_UNIONS = {
    st.OP_ADD_RESERVED: ("QQ", "start:iova length:len"),
    st.OP_MOCK_DOMAIN: ("III", "out_stdev_id out_hwpt_id out_idev_id"),
    st.OP_MOCK_DOMAIN_FLAGS: ("IIII", "out_stdev_id out_hwpt_id out_idev_id dev_flags:flags"),
    st.OP_MOCK_DOMAIN_REPLACE: ("I", "pt_id:id"),
    st.OP_MD_CHECK_MAP: ("QQQ", "iova:iova length:len uptr:ptr"),
    st.OP_MD_CHECK_REFS: ("QQI", "length:len uptr:ptr refs"),
    st.OP_CREATE_ACCESS: ("II", "out_access_fd flags:flags"),
    st.OP_DESTROY_ACCESS_PAGES: ("I", "access_pages_id:id"),
    st.OP_ACCESS_PAGES: ("IIQQQ", "flags:flags out_access_pages_id iova:iova length:len "
                                  "uptr:ptr"),
    st.OP_ACCESS_RW: ("QQQI", "iova:iova length:len uptr:ptr flags:flags"),
    st.OP_SET_TEMP_MEMORY_LIMIT: ("I", "limit:len"),
    st.OP_ACCESS_REPLACE_IOAS: ("I", "ioas_id:id"),
    st.OP_DIRTY: ("I4xQQQQQ", "flags:flags iova:iova length:len page_size uptr:ptr "
                              "out_nr_dirty"),
    st.OP_MD_CHECK_IOTLB: ("II", "iotlb_id:id iotlb"),
    st.OP_TRIGGER_IOPF: ("IIIIQ", "dev_id:id pasid grpid perm addr:iova"),
    st.OP_DEV_CHECK_CACHE: ("II", "cache_id:id cache"),
    st.OP_TRIGGER_VEVENT: ("I", "dev_id:id"),
}
_OP_NAMES = {v: k.removeprefix("OP_") for k, v in vars(st).items()
             if k.startswith("OP_") and isinstance(v, int)}


def _test_spec(op: int, fmt: str, names: str) -> Spec:
    pad = 48 - struct.calcsize("<" + fmt)
    layout = _S(f"<IIII{fmt}{pad}xI4x")
    return spec(f"TEST_{_OP_NAMES[op]}", iu.IOMMU_TEST_CMD, layout,
                f"size:size op id:id rsvd:rsvd {names} last", st.TEST_CMD_MIN)


#: selftest op -> Spec of its IOMMU_TEST_CMD.
TEST = {op: _test_spec(op, fmt, names) for op, (fmt, names) in _TEST_UNIONS.items()}
