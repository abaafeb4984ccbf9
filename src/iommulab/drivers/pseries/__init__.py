"""PowerPC pSeries: the hypervisor's TCE hcalls and DDW RTAS calls (:mod:`.hv`), the
guest's ``iommu_table`` allocator (:mod:`.table`), its LPAR TCE ops (:mod:`.lpar`),
``enable_ddw`` (:mod:`.ddw`) and the DMA API on top (:mod:`.dma`)."""

from .ddw import PseriesIommu
from .dma import PseriesDma, SgEntry
from .hv import DdwOffer, SpaprPhb
from .table import DMA_MAPPING_ERROR, IommuTable, iommu_init_table

__all__ = ["DMA_MAPPING_ERROR", "DdwOffer", "IommuTable", "PseriesDma", "PseriesIommu",
           "SgEntry", "SpaprPhb", "iommu_init_table"]
