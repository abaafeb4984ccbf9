/* A VMM giving its guest a nested intel-iommu (first stage in the guest, second stage
 * the host's) on Linux 6.12's iommufd, on a scalable-mode VT-d unit: the guest RAM (this
 * program's memory) is a NEST_PARENT | DIRTY_TRACKING HWPT, the guest's x86-64 first-stage
 * table lives in that RAM and becomes an IOMMU_HWPT_DATA_VTD_S1 HWPT, edu's DMA walks
 * both stages; a guest remap is made visible with HWPT_INVALIDATE (VTD_S1 entries), and
 * the parent's dirty bitmap shows the pages the DMA wrote. Usage: vmm_nested_vtd N
 * (/dev/vfio/devices/vfioN, an edu; iommulab exec --set vtd_scalable=1).
 * The iommufd structs are spelled out: the system has no linux/iommufd.h. Layouts and
 * numbers are 6.12's include/uapi/linux/iommufd.h. */
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "line %d: %s\n", __LINE__, #c); exit(1); } } while (0)
#define IOMMUFD_IO(n) _IO(';', 0x80 + (n))
#define IOMMU_DESTROY IOMMUFD_IO(0)
#define IOMMU_IOAS_ALLOC IOMMUFD_IO(1)
#define IOMMU_IOAS_MAP IOMMUFD_IO(5)
#define IOMMU_HWPT_ALLOC IOMMUFD_IO(9)
#define IOMMU_HWPT_SET_DIRTY_TRACKING IOMMUFD_IO(11)
#define IOMMU_HWPT_GET_DIRTY_BITMAP IOMMUFD_IO(12)
#define IOMMU_HWPT_INVALIDATE IOMMUFD_IO(13)
#ifndef VFIO_DEVICE_BIND_IOMMUFD
#define VFIO_DEVICE_BIND_IOMMUFD _IO(';', 100 + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(';', 100 + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(';', 100 + 20)
#endif

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type, data_len;
	uint64_t data_uptr; uint32_t fault_id, rsvd2; };
struct hwpt_vtd_s1 { uint64_t flags, pgtbl_addr; uint32_t addr_width, rsvd; };
struct vtd_s1_inv { uint64_t addr, npages; uint32_t flags, rsvd; };
struct hwpt_invalidate { uint32_t size, hwpt_id; uint64_t data_uptr;
	uint32_t data_type, entry_len, entry_num, rsvd; };
struct set_dirty { uint32_t size, flags, hwpt_id, rsvd; };
struct get_dirty { uint32_t size, hwpt_id, flags, rsvd; uint64_t iova, length, page_size, data; };
struct destroy { uint32_t size, id; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

#define HWPT_ALLOC_NEST_PARENT 1
#define HWPT_ALLOC_DIRTY_TRACKING 2
#define HWPT_DATA_VTD_S1 1
#define HWPT_INVALIDATE_DATA_VTD_S1 0
#define VTD_INV_FLAGS_LEAF 1

#define GPA 0x10000000ull /* where the guest's RAM starts */
#define RAM_SIZE (1u << 20)
#define PGD (GPA + 0x1000) /* the guest's 4-level first stage: one page per level */
#define SRC_IOVA 0x800000ull /* below edu's 28-bit DMA mask */
#define DST_IOVA 0x801000ull
#define SRC_GPA (GPA + 0x80000)
#define DST_GPA (GPA + 0x81000)
#define NEW_GPA (GPA + 0x82000)
/* first-stage entry bits (VT-d spec 9.9: P, R/W, U/S, A) */
#define FL_P 1
#define FL_RW 2
#define FL_US 4
#define FL_A 0x20

static int dev, iommufd;
static uint8_t *ram;

static void wr64(uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, off) == 8); }
static uint32_t rd32(uint64_t off) { uint32_t v; CHECK(pread(dev, &v, 4, off) == 4); return v; }
static uint64_t *at(uint64_t gpa) { return (uint64_t *)(ram + (gpa - GPA)); }

static void edu_dma(uint64_t iova, int to_ram)
{
	wr64(0x80, to_ram ? 0x40000 : iova);
	wr64(0x88, to_ram ? iova : 0x40000);
	wr64(0x90, 64);
	wr64(0x98, to_ram ? 1 | 2 : 1);
	CHECK((rd32(0x98) & 1) == 0);
}

static void destroy(uint32_t id)
{
	struct destroy d = { sizeof(d), id };
	CHECK(ioctl(iommufd, IOMMU_DESTROY, &d) == 0);
}

int main(int argc, char **argv)
{
	char path[64];
	CHECK(argc == 2);
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%s", argv[1]);
	dev = open(path, O_RDWR);
	CHECK(dev >= 0);
	struct bind b = { sizeof(b), 0, iommufd, 0 };
	CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);

	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ram != MAP_FAILED);
	memset(ram, 0, RAM_SIZE);
	struct ioas_alloc a = { sizeof(a), 0, 0 };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	struct ioas_map m = { sizeof(m), 1 | 2 | 4, a.out_ioas_id, 0, (uintptr_t)ram, RAM_SIZE, GPA };
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
	/* the second stage: dirty tracking if the unit can (SLADS), else without */
	struct hwpt_alloc s2 = { sizeof(s2), HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING,
		b.out_devid, a.out_ioas_id, 0, 0, 0, 0, 0, 0, 0 };
	int dirty = ioctl(iommufd, IOMMU_HWPT_ALLOC, &s2) == 0;
	if (!dirty) {
		s2.flags = HWPT_ALLOC_NEST_PARENT;
		CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &s2) == 0);
	}
	printf("ioas %u, nest parent %u (dirty tracking %s)\n", a.out_ioas_id, s2.out_hwpt_id,
	       dirty ? "yes" : "no");

	/* the guest's first stage: SRC_IOVA and DST_IOVA, in its RAM */
	for (int level = 0; level < 3; level++) {
		uint64_t idx = (SRC_IOVA >> (39 - 9 * level)) & 511;
		at(PGD + level * 0x1000)[idx] = (PGD + (level + 1) * 0x1000) | FL_P | FL_RW | FL_US | FL_A;
	}
	uint64_t *pte = at(PGD + 3 * 0x1000);
	pte[(SRC_IOVA >> 12) & 511] = SRC_GPA | FL_P | FL_RW | FL_US;
	pte[(DST_IOVA >> 12) & 511] = DST_GPA | FL_P | FL_RW | FL_US;
	for (int i = 0; i < 64; i++)
		ram[SRC_GPA - GPA + i] = (uint8_t)(i * 3 + 1);

	struct hwpt_vtd_s1 s1data = { 0, PGD, 48, 0 };
	struct hwpt_alloc s1 = { sizeof(s1), 0, b.out_devid, s2.out_hwpt_id, 0, 0,
		HWPT_DATA_VTD_S1, sizeof(s1data), (uintptr_t)&s1data, 0, 0 };
	CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &s1) == 0);
	struct attach att = { sizeof(att), 0, s1.out_hwpt_id };
	CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &att) == 0);
	printf("nested hwpt %u attached\n", s1.out_hwpt_id);
	if (dirty) {
		struct set_dirty sd = { sizeof(sd), 1, s2.out_hwpt_id, 0 };
		CHECK(ioctl(iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd) == 0);
	}

	uint16_t cmd = 6;
	CHECK(pwrite(dev, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4) == 2);
	edu_dma(SRC_IOVA, 0);
	edu_dma(DST_IOVA, 1);
	int ok1 = !memcmp(at(SRC_GPA), at(DST_GPA), 64);
	printf("dma iova %#llx -> gpa %#llx: %s\n", DST_IOVA, DST_GPA, ok1 ? "ok" : "WRONG");

	/* the guest moves DST_IOVA and invalidates it (one page, leaf) */
	pte[(DST_IOVA >> 12) & 511] = NEW_GPA | FL_P | FL_RW | FL_US;
	struct vtd_s1_inv e = { DST_IOVA, 1, VTD_INV_FLAGS_LEAF, 0 };
	struct hwpt_invalidate inv = { sizeof(inv), s1.out_hwpt_id, (uintptr_t)&e,
		HWPT_INVALIDATE_DATA_VTD_S1, sizeof(e), 1, 0 };
	CHECK(ioctl(iommufd, IOMMU_HWPT_INVALIDATE, &inv) == 0 && inv.entry_num == 1);
	edu_dma(DST_IOVA, 1);
	int ok2 = !memcmp(at(SRC_GPA), at(NEW_GPA), 64);
	printf("after remap + invalidate: iova %#llx -> gpa %#llx: %s\n", DST_IOVA, NEW_GPA,
	       ok2 ? "ok" : "WRONG");

	if (dirty) {
		uint64_t bits[RAM_SIZE / 4096 / 64] = { 0 };
		struct get_dirty gd = { sizeof(gd), s2.out_hwpt_id, 0, 0, GPA, RAM_SIZE, 4096,
			(uintptr_t)bits };
		CHECK(ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd) == 0);
		printf("dirty gpa pages:");
		for (unsigned i = 0; i < RAM_SIZE / 4096; i++)
			if (bits[i / 64] >> (i % 64) & 1)
				printf(" %#llx", GPA + i * 4096ull);
		printf("\n");
	}

	struct attach dt = { sizeof(dt), 0, 0 };
	CHECK(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt) == 0);
	destroy(s1.out_hwpt_id);
	destroy(s2.out_hwpt_id);
	destroy(a.out_ioas_id);
	close(dev);
	close(iommufd);
	int ok = ok1 && ok2;
	printf("nested vt-d guest: %s\n", ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}
