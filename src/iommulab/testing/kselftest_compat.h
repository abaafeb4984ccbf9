/*
 * iommulab: names the iommufd selftest of linux-source-6.12 (6.12.118) uses but the
 * uapi headers of the same tree lack; the selftest does not build without them.
 * Force-included (gcc -include) by iommulab.testing.kselftest. Values are the ones
 * the kernels that introduced the names give them (linux/iommufd.h and
 * drivers/iommu/iommufd/iommufd_test.h of 6.15 and later). A real 6.12 kernel
 * rejects what they ask for, as the model answering as 6.12 does.
 */
#ifndef IOMMULAB_KSELFTEST_COMPAT_H
#define IOMMULAB_KSELFTEST_COMPAT_H

/* enum iommu_hw_info_type: the input type "whatever the driver reports" (NONE's 0) */
#ifndef IOMMU_HW_INFO_TYPE_DEFAULT
#define IOMMU_HW_INFO_TYPE_DEFAULT 0
#endif
/* enum iommufd_hw_info_flags: the type field is an input */
#ifndef IOMMU_HW_INFO_FLAG_INPUT_TYPE
#define IOMMU_HW_INFO_FLAG_INPUT_TYPE (1 << 0)
#endif
/* struct iommu_hw_info: the input type shares a union (same offset) with out_data_type */
#define in_data_type out_data_type

/* iommufd_test.h: a mock device that supports PASID, and its PASID width */
#ifndef MOCK_FLAGS_DEVICE_PASID
#define MOCK_FLAGS_DEVICE_PASID (1 << 2)
#endif
#ifndef MOCK_PASID_WIDTH
#define MOCK_PASID_WIDTH 20
#endif

#endif
