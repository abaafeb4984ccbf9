/* What a VMM does with VFIO type1: container, group, SET_IOMMU, GET_INFO with its
 * capability chain, MAP_DMA of its own RAM, dirty tracking, UNMAP_DMA with the dirty
 * bitmap, the device fd. Usage: vfio_type1 GROUP BDF. Prints one line per call:
 * "<step> <ret> <errno> <values...>". */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int last_errno;

static int io(int fd, unsigned long req, void *arg)
{
	int rc = ioctl(fd, req, arg);
	last_errno = rc < 0 ? errno : 0;
	return rc;
}

static int io_val(int fd, unsigned long req, unsigned long arg)
{
	int rc = ioctl(fd, req, arg);
	last_errno = rc < 0 ? errno : 0;
	return rc;
}

static void map_dma(const char *step, int c, void *va, uint64_t size, uint64_t iova)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)va, .iova = iova, .size = size };
	int rc = io(c, VFIO_IOMMU_MAP_DMA, &m);
	printf("%s %d %d\n", step, rc, last_errno);
}

int main(int argc, char **argv)
{
	char path[64];
	if (argc != 3)
		return 1;
	int c = open("/dev/vfio/vfio", O_RDWR);
	printf("open_container %d %d\n", c < 0 ? -1 : 0, c < 0 ? errno : 0);
	printf("api_version %d %d\n", io_val(c, VFIO_GET_API_VERSION, 0), last_errno);
	printf("check_type1v2 %d %d\n", io_val(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU),
	       last_errno);
	snprintf(path, sizeof(path), "/dev/vfio/%s", argv[1]);
	int g = open(path, O_RDWR);
	printf("open_group %d %d\n", g < 0 ? -1 : 0, g < 0 ? errno : 0);

	struct vfio_group_status st = { .argsz = sizeof(st) };
	int rc = io(g, VFIO_GROUP_GET_STATUS, &st);
	printf("group_status %d %d %u\n", rc, last_errno, st.flags);
	rc = io_val(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	printf("set_iommu_early %d %d\n", rc, last_errno);
	rc = io(g, VFIO_GROUP_SET_CONTAINER, &c);
	printf("set_container %d %d\n", rc, last_errno);
	int bogus = 1000000;
	rc = io(g, VFIO_GROUP_SET_CONTAINER, &bogus);
	printf("set_container_bad_fd %d %d\n", rc, last_errno);
	rc = io_val(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	printf("set_iommu %d %d\n", rc, last_errno);

	/* GET_INFO: the fixed part first, then again with room for the capabilities */
	struct vfio_iommu_type1_info info = { .argsz = sizeof(info) };
	rc = io(c, VFIO_IOMMU_GET_INFO, &info);
	printf("get_info %d %d %u %#llx %u\n", rc, last_errno, info.flags,
	       (unsigned long long)info.iova_pgsizes, info.argsz);
	uint32_t need = info.argsz;
	struct vfio_iommu_type1_info *full = calloc(1, need);
	full->argsz = need;
	rc = io(c, VFIO_IOMMU_GET_INFO, full);
	printf("get_info_caps %d %d %u %u", rc, last_errno, full->flags, full->cap_offset);
	for (uint32_t off = full->cap_offset; off && off < need;) {
		struct vfio_info_cap_header *h = (void *)((char *)full + off);
		printf(" cap%u.v%u", h->id, h->version);
		if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
			struct vfio_iommu_type1_info_cap_iova_range *r = (void *)h;
			for (uint32_t i = 0; i < r->nr_iovas; i++)
				printf(" %#llx-%#llx", (unsigned long long)r->iova_ranges[i].start,
				       (unsigned long long)r->iova_ranges[i].end);
		} else if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
			printf(" avail=%u", ((struct vfio_iommu_type1_info_dma_avail *)h)->avail);
		}
		off = h->next;
	}
	printf("\n");

	/* guest RAM: an mmap'd 2 MiB region and a malloc'd page */
	size_t ram_size = 2 << 20;
	uint8_t *ram = mmap(NULL, 2 * ram_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ram = (uint8_t *)(((uintptr_t)ram + ram_size - 1) & ~(uintptr_t)(ram_size - 1));
	madvise(ram, ram_size, MADV_HUGEPAGE);  /* as QEMU asks for guest RAM */
	memset(ram, 0x11, ram_size);
	uint8_t *page = aligned_alloc(4096, 4096);
	memset(page, 0x22, 4096);
	map_dma("map_ram", c, ram, ram_size, 0x100000000ull);
	map_dma("map_page", c, page, 4096, 0x200000000ull);
	map_dma("map_bad_vaddr", c, (void *)0x10000, 4096, 0x300000000ull);
	map_dma("map_overlap", c, page, 4096, 0x100000000ull);
	uint8_t *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	map_dma("map_readonly_for_write", c, ro, 4096, 0x400000000ull);

	struct vfio_iommu_type1_dirty_bitmap dirty = { .argsz = sizeof(dirty),
		.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_START };
	rc = io(c, VFIO_IOMMU_DIRTY_PAGES, &dirty);
	printf("dirty_start %d %d\n", rc, last_errno);

	/* unmap the RAM with its dirty bitmap: every pinned page is dirty */
	size_t words = ram_size / 4096 / 64;
	uint64_t *bits = calloc(words, 8);
	char ubuf[sizeof(struct vfio_iommu_type1_dma_unmap) + sizeof(struct vfio_bitmap)];
	struct vfio_iommu_type1_dma_unmap *u = (void *)ubuf;
	struct vfio_bitmap *bm = (void *)u->data;
	memset(ubuf, 0, sizeof(ubuf));
	u->argsz = sizeof(ubuf);
	u->flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	u->iova = 0x100000000ull;
	u->size = ram_size;
	bm->pgsize = 4096;
	bm->size = words * 8;
	bm->data = (__u64 *)0x10000;  /* first a bitmap pointer that faults */
	rc = io(c, VFIO_IOMMU_UNMAP_DMA, u);
	printf("unmap_dirty_bad_bitmap %d %d %#llx\n", rc, last_errno, (unsigned long long)u->size);
	u->size = ram_size;
	bm->data = (__u64 *)bits;
	rc = io(c, VFIO_IOMMU_UNMAP_DMA, u);
	uint64_t ones = 0;
	for (size_t i = 0; i < words; i++)
		ones += (uint64_t)__builtin_popcountll(bits[i]);
	printf("unmap_dirty %d %d %#llx %llu\n", rc, last_errno, (unsigned long long)u->size,
	       (unsigned long long)ones);

	struct vfio_iommu_type1_dma_unmap u2 = { .argsz = sizeof(u2), .iova = 0x200000000ull,
						 .size = 4096 };
	rc = io(c, VFIO_IOMMU_UNMAP_DMA, &u2);
	printf("unmap_page %d %d %#llx\n", rc, last_errno, (unsigned long long)u2.size);

	int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	printf("get_device_fd %d %d\n", dev < 0 ? -1 : 0, dev < 0 ? errno : 0);
	rc = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:1f.7");
	printf("get_device_fd_unknown %d %d\n", rc, rc < 0 ? errno : 0);
	struct vfio_device_info di = { .argsz = sizeof(di) };
	rc = io(dev, VFIO_DEVICE_GET_INFO, &di);
	printf("device_info %d %d %u %u %u\n", rc, last_errno, di.flags, di.num_regions,
	       di.num_irqs);
	close(dev);
	rc = io_val(g, VFIO_GROUP_UNSET_CONTAINER, 0);
	printf("unset_container %d %d\n", rc, last_errno);
	close(g);
	close(c);
	printf("done\n");
	return 0;
}
