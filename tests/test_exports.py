"""The public names are the intended ones (trio's test_exports)."""

import importlib

import pytest

import iommulab

PUBLIC = {
    "iommulab": {"Prot", "__version__", "errors", "sizes"},
    "iommulab.mem": {"MAX_ORDER", "PAGE_BYTES", "SECTION_FRAMES", "FailNth", "FrameAllocator",
                     "MemRegion", "PhysMem", "PinCounts", "SparseContents", "get_order"},
    "iommulab.pgtable": {
        "IOMMU_DIRTY_NO_CLEAR", "ArmLpaeFormat", "ArmLpaeS1Cfg", "ArmLpaeS2Cfg", "ArmLpaeTcr",
        "ArmLpaeVtcr", "DirtyRecorder", "Field", "GatherLike", "IoPgtable", "IoPgtableCfg",
        "IoPgtableFmt", "IommuFlushOps", "Layout", "Level", "PgtableStats", "PtFormat",
        "Quirk", "alloc_io_pgtable_ops", "free_io_pgtable_ops", "genmask"},
    "iommulab.iommu": {
        "MSI_IOVA_BASE", "MSI_IOVA_LENGTH", "DirtyOps", "DomainGeometry", "DomainOps",
        "DomainType", "IommuCap", "IommuDirtyBitmap", "IommuDomain", "IommuIotlbGather",
        "IovaBitmap", "PgtblDomainOps", "PgtblFlushOps", "ResvRegion", "ResvType", "SgEntry",
        "TlbStats", "alloc_paging_domain", "iommu_iotlb_gather_add_page", "iommu_pgsize"},
    "iommulab.drivers.smmuv3": {
        "HWPT_ALLOC_DIRTY_TRACKING", "HWPT_ALLOC_NEST_PARENT", "HWPT_ALLOC_PASID",
        "ArmSmmuDevice", "ArmSmmuDomain", "ArmSmmuMaster", "Feature", "HwStats", "Iotlb",
        "IotlbConfig", "IotlbEntry", "IotlbStats", "SmmuEvent", "SmmuV3Config", "SmmuV3Hw"},
    "iommulab.devices": {"DmaDevice", "DmaStats", "Translator"},
    "iommulab.testing": {"RecordingTlb"},
    "iommulab.report": {"format_size", "format_table"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} listed but missing"


def test_version() -> None:
    assert iommulab.__version__ == "0.1.0"
