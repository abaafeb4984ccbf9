/* A VMM's BAR mapping under iommulab exec:
 *   iommulab exec --set device=BDF:plain --set device=EDU_BDF -- \
 *       ./bar_mmap GROUP BDF EDU_GROUP EDU_BDF CDEV_N
 * BAR 0 of a plain device (its BAR is memory) through the group path: GET_REGION_INFO
 * offers MMAP, a MAP_SHARED mapping and pread/pwrite of the region see each other's
 * bytes, vfio_pci_core_mmap's refusals (EINVAL), a forked child's stores, the mapping
 * outliving the fd and the bytes outliving the mapping; the same through the device
 * cdev bound to an iommufd; edu's BAR (registers) neither offers MMAP nor maps, but
 * edu's DMA engine reaches the plain BAR through the IOMMU once type1 maps the BAR's
 * mapping (peer to peer).
 * Prints one line per step; exits 0 if all is right. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "bar_mmap: line %d: %s failed " \
	"(errno %d)\n", __LINE__, #cond, errno); exit(1); } } while (0)
#define PG 4096UL
#define CFG ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40)

/* 6.12's struct vfio_device_bind_iommufd, spelled out for older headers */
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
#define BIND_IOMMUFD _IO(';', 100 + 18)
struct attach { uint32_t argsz, flags, pt_id; };
#define ATTACH_IOMMUFD_PT _IO(';', 100 + 19)
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
#define P2P_IOVA 0x200000UL /* below edu's 28-bit DMA mask */
#define EDU_BUF 0x40000UL

static void wr64(int dev, uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, off) == 8); }

/* one run of edu's DMA engine; lab: done before the starting write returns */
static void edu_dma(int edu, uint64_t bar, uint64_t src, uint64_t dst, int to_ram)
{
	uint64_t st;
	wr64(edu, bar + 0x80, src);
	wr64(edu, bar + 0x88, dst);
	wr64(edu, bar + 0x90, 64);
	wr64(edu, bar + 0x98, 1 | (to_ram ? 2 : 0));
	CHECK(pread(edu, &st, 8, bar + 0x98) == 8 && !(st & 1));
}

static int open_group(int container, const char *n)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/vfio/%s", n);
	int g = open(path, O_RDWR);
	CHECK(g >= 0);
	struct vfio_group_status st = { .argsz = sizeof(st) };
	CHECK(ioctl(g, VFIO_GROUP_GET_STATUS, &st) == 0 && (st.flags & VFIO_GROUP_FLAGS_VIABLE));
	CHECK(ioctl(g, VFIO_GROUP_SET_CONTAINER, &container) == 0);
	return g;
}

static struct vfio_region_info region(int dev, unsigned index)
{
	struct vfio_region_info r = { .argsz = sizeof(r), .index = index };
	CHECK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r) == 0);
	return r;
}

/* mmap that must fail with err */
static void refused(int dev, size_t len, int flags, uint64_t off, int err, const char *what)
{
	errno = 0;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, dev, off);
	if (p != MAP_FAILED || errno != err) {
		fprintf(stderr, "bar_mmap: %s: got %p errno %d, want errno %d\n", what, p, errno, err);
		exit(1);
	}
}

static void memory_on(int dev)
{
	uint16_t cmd;
	CHECK(pread(dev, &cmd, 2, CFG + 4) == 2);
	cmd |= 6; /* PCI_COMMAND_MEMORY and _MASTER: BAR accesses and DMA work */
	CHECK(pwrite(dev, &cmd, 2, CFG + 4) == 2);
}

/* The mapping and the region's pread/pwrite are one set of bytes. */
static void coherent(int dev, volatile uint8_t *p, uint64_t off, size_t size, uint8_t seed)
{
	uint8_t *buf = malloc(size);
	for (size_t i = 0; i < size; i++)
		p[i] = (uint8_t)(i * 7 + seed);
	CHECK(pread(dev, buf, size, off) == (ssize_t)size);
	for (size_t i = 0; i < size; i++)
		CHECK(buf[i] == (uint8_t)(i * 7 + seed));
	for (size_t i = 0; i < 256; i++)
		buf[i] = (uint8_t)(0xa5 ^ i ^ seed);
	CHECK(pwrite(dev, buf, 256, off + 8192 + 3) == 256);
	for (size_t i = 0; i < 256; i++)
		CHECK(p[8192 + 3 + i] == (uint8_t)(0xa5 ^ i ^ seed));
	free(buf);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: bar_mmap GROUP BDF EDU_GROUP EDU_BDF CDEV_N\n");
		return 2;
	}
	int container = open("/dev/vfio/vfio", O_RDWR);
	CHECK(container >= 0);
	int group = open_group(container, argv[1]);
	CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0);
	int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	CHECK(dev >= 0);

	struct vfio_region_info bar = region(dev, VFIO_PCI_BAR0_REGION_INDEX);
	struct vfio_region_info cfg = region(dev, VFIO_PCI_CONFIG_REGION_INDEX);
	CHECK(bar.flags == (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE |
			    VFIO_REGION_INFO_FLAG_MMAP));
	CHECK(!(cfg.flags & VFIO_REGION_INFO_FLAG_MMAP));
	printf("bar0: %llu KiB at %#llx, flags %#x\n", (unsigned long long)bar.size >> 10,
	       (unsigned long long)bar.offset, bar.flags);
	size_t size = bar.size;
	memory_on(dev);

	/* vfio_pci_core_mmap's refusals, and do_mmap's before them */
	refused(dev, size, MAP_PRIVATE, bar.offset, EINVAL, "MAP_PRIVATE");
	refused(dev, size + PG, MAP_SHARED, bar.offset, EINVAL, "past the BAR's end");
	refused(dev, size, MAP_SHARED, bar.offset + PG, EINVAL, "offset + length past the end");
	refused(dev, PG, MAP_SHARED, bar.offset + size, EINVAL, "offset at the end");
	refused(dev, PG, MAP_SHARED, bar.offset + 1, EINVAL, "unaligned offset");
	refused(dev, 0, MAP_SHARED, bar.offset, EINVAL, "length 0");
	refused(dev, PG, MAP_SHARED, cfg.offset, EINVAL, "config space");
	refused(dev, PG, MAP_SHARED, (uint64_t)VFIO_PCI_BAR1_REGION_INDEX << 40, EINVAL, "BAR 1");
	refused(dev, PG, MAP_SHARED, (uint64_t)VFIO_PCI_NUM_REGIONS << 40, EINVAL, "no region");
	printf("refused: MAP_PRIVATE, past the end, unaligned, other regions\n");

	volatile uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
	CHECK(p != MAP_FAILED);
	coherent(dev, p, bar.offset, size, 1);
	/* a second mapping of part of the BAR sees the same bytes */
	volatile uint8_t *q = mmap(NULL, PG, PROT_READ, MAP_SHARED, dev, bar.offset + 2 * PG);
	CHECK(q != MAP_FAILED);
	CHECK(q[3] == p[2 * PG + 3] && q[100] == p[2 * PG + 100]);
	p[2 * PG + 5] = 0x42;
	CHECK(q[5] == 0x42);
	printf("mapped: stores and pread/pwrite agree\n");

	/* edu: registers behind BAR 0, no mapping */
	int egroup = open_group(container, argv[3]);
	int edu = ioctl(egroup, VFIO_GROUP_GET_DEVICE_FD, argv[4]);
	CHECK(edu >= 0);
	struct vfio_region_info ebar = region(edu, VFIO_PCI_BAR0_REGION_INDEX);
	CHECK(ebar.flags == (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE));
	refused(edu, PG, MAP_SHARED, ebar.offset, EINVAL, "edu's BAR 0");
	printf("edu: flags %#x, mmap refused\n", ebar.flags);

	/* peer to peer: type1 maps the BAR mapping (VM_PFNMAP: nothing pinned), and edu's
	 * DMA engine reads and writes the plain device's BAR through the IOMMU */
	struct vfio_iommu_type1_dma_map dm = { .argsz = sizeof(dm),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)p, .iova = P2P_IOVA, .size = size };
	CHECK(ioctl(container, VFIO_IOMMU_MAP_DMA, &dm) == 0);
	memory_on(edu);
	for (int i = 0; i < 64; i++)
		p[0x100 + i] = (uint8_t)(i ^ 0x3c);
	edu_dma(edu, ebar.offset, P2P_IOVA + 0x100, EDU_BUF, 0);
	edu_dma(edu, ebar.offset, EDU_BUF, P2P_IOVA + 0x1000, 1);
	CHECK(!memcmp((void *)(p + 0x1000), (void *)(p + 0x100), 64));
	struct vfio_iommu_type1_dma_unmap um = { .argsz = sizeof(um), .iova = P2P_IOVA,
		.size = size };
	CHECK(ioctl(container, VFIO_IOMMU_UNMAP_DMA, &um) == 0 && um.size == size);
	printf("peer to peer: edu copied 64 bytes within the BAR\n");

	/* a second device fd of the device cannot map the BAR while the first backs it */
	int dev2 = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	CHECK(dev2 >= 0);
	refused(dev2, PG, MAP_SHARED, bar.offset, EBUSY, "second device fd");
	uint8_t b;
	CHECK(pread(dev2, &b, 1, bar.offset + 2 * PG + 5) == 1 && b == 0x42);
	close(dev2);

	/* fork: the child's mapping is the parent's */
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		p[17] = 0x99;
		uint8_t c;
		_exit(pread(dev, &c, 1, bar.offset + 17) == 1 && c == 0x99 ? 0 : 1);
	}
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0);
	CHECK(p[17] == 0x99);
	CHECK(pread(dev, &b, 1, bar.offset + 17) == 1 && b == 0x99);
	printf("fork: the child's store is the parent's\n");

	/* the mapping outlives the fd; the bytes outlive the mapping */
	CHECK(close(dev) == 0);
	refused(dev, PG, MAP_SHARED, bar.offset, EBADF, "closed fd");
	p[size - 1] = 0x77;
	CHECK(munmap((void *)q, PG) == 0 && munmap((void *)p, size) == 0);
	dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	CHECK(dev >= 0);
	CHECK(pread(dev, &b, 1, bar.offset + size - 1) == 1 && b == 0x77);
	CHECK(pread(dev, &b, 1, bar.offset + 17) == 1 && b == 0x99);
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, dev, bar.offset);
	CHECK(p != MAP_FAILED && p[size - 1] == 0x77 && p[2 * PG + 5] == 0x42);
	CHECK(munmap((void *)p, size) == 0);
	printf("after close and munmap: the device keeps the bytes\n");

	close(edu);
	close(egroup);
	close(dev);
	close(group);
	close(container);

	/* the device cdev: EINVAL until bound to an iommufd, then as the group path */
	char path[64];
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%s", argv[5]);
	int cdev = open(path, O_RDWR);
	CHECK(cdev >= 0);
	refused(cdev, PG, MAP_SHARED, bar.offset, EINVAL, "unbound cdev");
	int iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	struct bind bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	CHECK(ioctl(cdev, BIND_IOMMUFD, &bind) == 0);
	bar = region(cdev, VFIO_PCI_BAR0_REGION_INDEX);
	CHECK(bar.flags & VFIO_REGION_INFO_FLAG_MMAP);
	memory_on(cdev);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, cdev, bar.offset);
	CHECK(p != MAP_FAILED);
	CHECK(p[size - 1] == 0x77 && p[17] == 0x99);
	coherent(cdev, p, bar.offset, size, 2);
	printf("cdev: stores and pread/pwrite agree\n");
	/* iommufd pins with pin_user_pages, which refuses a VM_PFNMAP mapping */
	struct ioas_alloc ia = { sizeof(ia) };
	CHECK(ioctl(iommufd, _IO(';', 0x81), &ia) == 0); /* IOMMU_IOAS_ALLOC */
	struct attach at = { sizeof(at), 0, ia.out_ioas_id };
	CHECK(ioctl(cdev, ATTACH_IOMMUFD_PT, &at) == 0);
	struct ioas_map im = { sizeof(im), 1 | 2 | 4, ia.out_ioas_id, 0, (uintptr_t)p, size,
		P2P_IOVA };
	errno = 0;
	CHECK(ioctl(iommufd, _IO(';', 0x85), &im) == -1 && errno == EFAULT); /* IOAS_MAP */
	printf("iommufd: IOAS_MAP of the BAR mapping is EFAULT\n");
	CHECK(munmap((void *)p, size) == 0);
	close(cdev);
	close(iommufd);
	return 0;
}
