"""iommufd: /dev/iommu, the io_pagetable, HWPTs and accesses (drivers/iommu/iommufd/)."""
