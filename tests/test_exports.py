"""The public names are the intended ones (trio's test_exports)."""

import importlib

import pytest

import iommulab

PUBLIC = {
    "iommulab": {"Machine", "PciDevice", "Process", "Prot", "__version__", "errors", "sizes"},
    "iommulab.vfio": {"Container", "DeviceFile", "GroupFile", "Type1Report", "Type1Stats",
                      "VfioDma", "VfioFile", "VfioIommu", "type1_check_extension", "uapi"},
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
        "TlbStats", "alloc_paging_domain", "iommu_iotlb_gather_add_page", "iommu_pgsize",
        "DevIommu", "IommuCore", "IommuDriver", "IommuGroup", "insert_resv_region",
        "merge_resv_regions"},
    "iommulab.iova": {"IOVA_ANCHOR", "IOVA_DEPOT_DELAY_MS", "IOVA_MAG_SIZE",
                      "IOVA_RANGE_CACHE_MAX_SIZE", "Iova", "IovaDomain", "IovaStats"},
    "iommulab.dma": {
        "DMA_ATTR_ALLOC_SINGLE_PAGES", "DMA_ATTR_FORCE_CONTIGUOUS", "DMA_ATTR_MMIO",
        "DMA_ATTR_PRIVILEGED", "DMA_ATTR_SKIP_CPU_SYNC", "DMA_MAPPING_ERROR",
        "IOVA_DEFAULT_FQ_SIZE", "IOVA_DEFAULT_FQ_TIMEOUT", "CoherentBuffer", "CookieType",
        "DmaCookie", "DmaDirection", "FqStats", "MsiCookie", "MsiPage", "Scatterlist",
        "dma_alloc_coherent", "dma_free_coherent", "dma_get_msi_page", "dma_map_page",
        "dma_map_resource", "dma_map_sg", "dma_mapping_error", "dma_set_coherent_mask",
        "dma_set_mask", "dma_set_mask_and_coherent", "dma_unmap_page", "dma_unmap_resource",
        "dma_unmap_sg", "get_msi_cookie",
        "prepare_msi", "use_dma_iommu"},
    "iommulab.clock": {"NSEC_PER_SEC", "Clock", "Timer"},
    "iommulab.kernel": {"DEFAULT_KERNEL", "KERNEL_VERSIONS", "LINUX_6_12", "LINUX_7_0",
                        "KernelVersion"},
    "iommulab.irqchip": {"GITS_TRANSLATER", "GicV3Its"},
    "iommulab.drivers.smmuv3": {
        "HWPT_ALLOC_DIRTY_TRACKING", "HWPT_ALLOC_NEST_PARENT", "HWPT_ALLOC_PASID",
        "ArmSmmuDevice", "ArmSmmuDomain", "ArmSmmuMaster", "Feature", "HwStats", "Iotlb",
        "IotlbConfig", "IotlbEntry", "IotlbStats", "SmmuEvent", "SmmuV3Config", "SmmuV3Hw",
        "make_nested_domain_ste", "validate_vste"},
    "iommulab.devices": {"DMA_BIT_MASK", "DmaDevice", "DmaStats", "Translator"},
    "iommulab.sweep": {"TIMING_PREFIX", "DaskEngine", "Outcome", "OutputDir", "Point",
                       "ResultsTable", "SerialEngine", "SweepResult", "SweepSpec", "expand",
                       "results_table", "run_point", "run_points", "run_sweep",
                       "scenario_runner"},
    "iommulab.testing": {"LeakSnapshot", "RecordingTlb", "check_invariants", "leak_snapshot"},
    "iommulab.testing.fuzz": {"Finding", "FuzzReport", "Fuzzer", "Guard", "Op", "ProcSpec",
                              "SequenceResult", "World", "WorldConfig", "address_space_limit",
                              "find_device", "minimize", "random_config", "render", "replay",
                              "run_sequence"},
    "iommulab.report": {"format_size", "format_table"},
    "iommulab.uapi": {"UapiStruct", "UapiUnion", "field_names", "ioc_io", "iommufd",
                      "offsetofend", "struct_layout", "vfio"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} listed but missing"


def test_version() -> None:
    assert iommulab.__version__ == "0.1.0"
