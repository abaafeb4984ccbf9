/* A VMM giving its guest an accelerated vSMMUv3 (QEMU's arm-smmuv3,accel=on) on Linux
 * 7.0's iommufd: the guest RAM (this program's memory) is the stage-2 nest parent, a
 * vIOMMU and a vDEVICE (the guest's StreamID) sit on it, the guest's STE becomes a nested
 * HWPT, and edu's DMA engine then walks the guest's CD and stage-1 table (in guest RAM)
 * and the parent. The guest's TLBI/CFGI commands go through the vIOMMU, a guest fault
 * comes back on the vEVENTQ with the virtual StreamID. Usage: vmm_nested_smmuv3 N
 * (/dev/vfio/devices/vfioN, an edu on arm64-smmuv3, kernel 7.0).
 * The iommufd structs are spelled out here: the system has no linux/iommufd.h, and the
 * vIOMMU ones (VIOMMU_ALLOC, VDEVICE_ALLOC, VEVENTQ_ALLOC, HWPT_DATA_ARM_SMMUV3) came
 * after 6.12's headers anyway. Layouts and numbers are 7.0's include/uapi/linux/iommufd.h. */
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
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
#define IOMMU_GET_HW_INFO IOMMUFD_IO(10)
#define IOMMU_HWPT_INVALIDATE IOMMUFD_IO(13)
#define IOMMU_VIOMMU_ALLOC IOMMUFD_IO(16)
#define IOMMU_VDEVICE_ALLOC IOMMUFD_IO(17)
#define IOMMU_VEVENTQ_ALLOC IOMMUFD_IO(19)
#ifndef VFIO_DEVICE_BIND_IOMMUFD
#define VFIO_DEVICE_BIND_IOMMUFD _IO(';', 100 + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(';', 100 + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(';', 100 + 20)
#endif

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct hw_info { uint32_t size, flags, dev_id, data_len; uint64_t data_uptr;
	uint32_t out_data_type; uint8_t out_max_pasid_log2, rsvd[3]; uint64_t out_capabilities; };
struct hw_info_arm_smmuv3 { uint32_t flags, rsvd, idr[6], iidr, aidr; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type, data_len;
	uint64_t data_uptr; uint32_t fault_id, rsvd2; };
struct viommu_alloc { uint32_t size, flags, type, dev_id, hwpt_id, out_viommu_id, data_len, rsvd;
	uint64_t data_uptr; };
struct vdevice_alloc { uint32_t size, viommu_id, dev_id, out_vdevice_id; uint64_t virt_id; };
struct veventq_alloc { uint32_t size, flags, viommu_id, type, depth, out_veventq_id,
	out_veventq_fd, rsvd; };
struct hwpt_invalidate { uint32_t size, hwpt_id; uint64_t data_uptr;
	uint32_t data_type, entry_len, entry_num, rsvd; };
struct destroy { uint32_t size, id; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

#define HW_INFO_TYPE_ARM_SMMUV3 2
#define HWPT_ALLOC_NEST_PARENT 1
#define HWPT_DATA_ARM_SMMUV3 2
#define VIOMMU_TYPE_ARM_SMMUV3 1
#define VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 1
#define VEVENTQ_TYPE_ARM_SMMUV3 1

/* the guest's layout of its RAM (guest physical = IPA = IOVA of the IOAS) */
#define RAM_SIZE (2u << 20)
#define CD_GPA 0x8000 /* its CD table: one CD, SSID 0 */
#define PGD_GPA 0x9000 /* its stage-1 table, one page per level */
#define SRC_GPA 0x20000
#define DST_GPA 0x21000
#define NEW_GPA 0x22000
#define SRC_IOVA 0x1000
#define DST_IOVA 0x2000
#define ASID 5
#define VSID 0x10 /* the StreamID the guest sees */
/* SMMUv3 command opcodes (spec 4.1) and the event the guest expects */
#define CMD_CFGI_CD 0x05
#define CMD_TLBI_NH_VA 0x12
#define EVT_F_TRANSLATION 0x10

static int dev, iommufd;
static uint8_t *ram;

static void wr64(uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, off) == 8); }
static uint64_t rd32(uint64_t off) { uint32_t v; CHECK(pread(dev, &v, 4, off) == 4); return v; }
static uint64_t *gpa(uint64_t a) { return (uint64_t *)(ram + a); }

/* edu's DMA engine: count bytes between its buffer (0x40000) and IOVA, synchronous here */
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

static void invalidate(uint32_t viommu, uint64_t w0, uint64_t w1)
{
	uint64_t cmd[2] = { w0, w1 };
	struct hwpt_invalidate inv = { sizeof(inv), viommu, (uintptr_t)cmd,
		VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, sizeof(cmd), 1 };
	CHECK(ioctl(iommufd, IOMMU_HWPT_INVALIDATE, &inv) == 0 && inv.entry_num == 1);
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
	struct bind b = { sizeof(b), 0, iommufd };
	CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);

	/* what the virtual SMMU's ID registers are built from */
	struct hw_info_arm_smmuv3 smmu = { 0 };
	struct hw_info hi = { sizeof(hi), 0, b.out_devid, sizeof(smmu), (uintptr_t)&smmu };
	CHECK(ioctl(iommufd, IOMMU_GET_HW_INFO, &hi) == 0);
	CHECK(hi.out_data_type == HW_INFO_TYPE_ARM_SMMUV3);
	printf("hw_info: arm-smmuv3, idr0 %#x (s1 %u s2 %u)\n", smmu.idr[0], (smmu.idr[0] >> 1) & 1,
	       smmu.idr[0] & 1);

	/* guest RAM at IPA 0: the nest parent (stage 2) */
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ram != MAP_FAILED);
	memset(ram, 0, RAM_SIZE);
	struct ioas_alloc a = { sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	struct ioas_map m = { sizeof(m), 1 | 2 | 4, a.out_ioas_id, 0, (uintptr_t)ram, RAM_SIZE, 0 };
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
	struct hwpt_alloc s2 = { sizeof(s2), HWPT_ALLOC_NEST_PARENT, b.out_devid, a.out_ioas_id };
	CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &s2) == 0);
	struct viommu_alloc va = { sizeof(va), 0, VIOMMU_TYPE_ARM_SMMUV3, b.out_devid, s2.out_hwpt_id };
	CHECK(ioctl(iommufd, IOMMU_VIOMMU_ALLOC, &va) == 0);
	struct vdevice_alloc vd = { sizeof(vd), va.out_viommu_id, b.out_devid, 0, VSID };
	CHECK(ioctl(iommufd, IOMMU_VDEVICE_ALLOC, &vd) == 0);
	printf("ioas %u, nest parent %u, viommu %u, vdevice %u (vsid %#x)\n", a.out_ioas_id,
	       s2.out_hwpt_id, va.out_viommu_id, vd.out_vdevice_id, VSID);

	/* the guest kernel's work: a CD (4K granule, 48-bit VA, ASID 5, TTB0 = PGD) and a
	 * 4-level stage-1 table mapping SRC_IOVA and DST_IOVA */
	gpa(CD_GPA)[0] = 16 /* T0SZ */ | 1ull << 8 /* IR0 */ | 1ull << 10 /* OR0 */ |
		3ull << 12 /* SH0 */ | 1ull << 30 /* EPD1 */ | 1ull << 31 /* V */ |
		5ull << 32 /* IPS */ | 1ull << 41 /* AA64 */ | 1ull << 45 /* R */ |
		1ull << 46 /* A */ | 1ull << 47 /* ASET */ | (uint64_t)ASID << 48;
	gpa(CD_GPA)[1] = PGD_GPA; /* TTB0 */
	for (int level = 0; level < 3; level++)
		gpa(PGD_GPA + level * 4096)[0] = (PGD_GPA + (level + 1) * 4096) | 3;
	uint64_t *pte = gpa(PGD_GPA + 3 * 4096);
	const uint64_t leaf = 3 | 1ull << 6 /* AP: EL0 */ | 1ull << 10 /* AF */;
	pte[SRC_IOVA >> 12] = SRC_GPA | leaf;
	pte[DST_IOVA >> 12] = DST_GPA | leaf;
	for (int i = 0; i < 64; i++)
		ram[SRC_GPA + i] = (uint8_t)(i * 7 + 1);

	/* the guest's STE: valid, stage-1 translate, linear CD table at CD_GPA, SSID 0 */
	uint64_t ste[2] = { 1 /* V */ | 5ull << 1 /* Config S1 */ | CD_GPA /* S1ContextPtr */,
		2 /* S1DSS: SSID 0 */ | 1ull << 2 | 1ull << 4 | 3ull << 6 /* S1CIR, S1COR, S1CSH */ };
	struct hwpt_alloc s1 = { sizeof(s1), 0, b.out_devid, va.out_viommu_id, 0, 0,
		HWPT_DATA_ARM_SMMUV3, sizeof(ste), (uintptr_t)ste };
	CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &s1) == 0);
	struct attach at = { sizeof(at), 0, s1.out_hwpt_id };
	CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0);
	printf("nested hwpt %u attached\n", s1.out_hwpt_id);

	uint16_t cmd = 6; /* memory decoding, bus master */
	CHECK(pwrite(dev, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4) == 2);
	edu_dma(SRC_IOVA, 0);
	edu_dma(DST_IOVA, 1);
	int ok1 = !memcmp(ram + SRC_GPA, ram + DST_GPA, 64);
	printf("dma iova %#x -> gpa %#x: %s\n", DST_IOVA, DST_GPA, ok1 ? "ok" : "WRONG");

	/* the guest moves DST_IOVA to NEW_GPA: CD re-read, then its TLBI by VA (leaf) */
	pte[DST_IOVA >> 12] = NEW_GPA | leaf;
	invalidate(va.out_viommu_id, CMD_CFGI_CD | (uint64_t)VSID << 32, 1);
	invalidate(va.out_viommu_id, CMD_TLBI_NH_VA | (uint64_t)ASID << 48, DST_IOVA | 1);
	edu_dma(DST_IOVA, 1);
	int ok2 = !memcmp(ram + SRC_GPA, ram + NEW_GPA, 64);
	printf("after remap + TLBI_NH_VA: iova %#x -> gpa %#x: %s\n", DST_IOVA, NEW_GPA,
	       ok2 ? "ok" : "WRONG");

	/* the guest unmaps DST_IOVA; the device's next DMA there is the guest's fault */
	struct veventq_alloc q = { sizeof(q), 0, va.out_viommu_id, VEVENTQ_TYPE_ARM_SMMUV3, 8 };
	CHECK(ioctl(iommufd, IOMMU_VEVENTQ_ALLOC, &q) == 0);
	/* nothing queued yet, and a vEVENTQ is never writable (iommufd_eventq_fops_poll) */
	struct pollfd p = { .fd = (int)q.out_veventq_fd, .events = POLLIN | POLLOUT };
	CHECK(poll(&p, 1, 0) == 0);
	pte[DST_IOVA >> 12] = 0;
	invalidate(va.out_viommu_id, CMD_TLBI_NH_VA | (uint64_t)ASID << 48, DST_IOVA | 1);
	edu_dma(DST_IOVA, 1);
	CHECK(poll(&p, 1, 5000) == 1 && p.revents == POLLIN);
	uint64_t rec[1 + 4];
	CHECK(read((int)q.out_veventq_fd, rec, sizeof(rec)) == sizeof(rec));
	CHECK(poll(&p, 1, 0) == 0); /* read: nothing left */
	uint32_t evt_id = rec[1] & 0xff, sid = rec[1] >> 32;
	printf("veventq: event %#x sid %#x stage %u iova %#llx\n", evt_id, sid,
	       (unsigned)((rec[2] >> 39) & 1) ? 2 : 1, (unsigned long long)rec[3]);
	int ok3 = evt_id == EVT_F_TRANSLATION && sid == VSID && rec[3] == DST_IOVA;

	/* teardown, as a VMM does at guest shutdown */
	struct attach dt = { sizeof(dt) };
	CHECK(ioctl(dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt) == 0);
	close((int)q.out_veventq_fd);
	destroy(q.out_veventq_id);
	destroy(s1.out_hwpt_id);
	destroy(vd.out_vdevice_id);
	destroy(va.out_viommu_id);
	destroy(s2.out_hwpt_id);
	destroy(a.out_ioas_id);
	close(dev);
	close(iommufd);
	int ok = ok1 && ok2 && ok3;
	printf("nested smmuv3 guest: %s\n", ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}
