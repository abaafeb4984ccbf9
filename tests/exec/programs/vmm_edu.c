/* A tiny VMM driving QEMU's edu device through VFIO type1, as under iommulab exec:
 *   iommulab exec -- ./vmm_edu GROUP BDF
 * Container + group, 2 pages of "guest RAM" mapped for DMA, the device fd; BAR 0 and
 * config space through pread/pwrite at the offsets GET_REGION_INFO gives (no mmap),
 * the factorial unit, then a DMA to the device and back, each completion waited for on
 * an eventfd wired to edu's MSI vector. Prints what it sees; exits 0 if all is right. */
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define IOVA 0x100000 /* below edu's 28-bit DMA mask */
#define EDU_BUF 0x40000 /* edu's DMA buffer, in its own address space */

static int dev;
static uint64_t bar0, cfg;

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "vmm_edu: line %d: %s failed\n", __LINE__, #cond); exit(1); } } while (0)

static uint32_t rd32(uint64_t off)
{
	uint32_t v;
	CHECK(pread(dev, &v, 4, bar0 + off) == 4);
	return v;
}

static void wr32(uint64_t off, uint32_t v) { CHECK(pwrite(dev, &v, 4, bar0 + off) == 4); }
static void wr64(uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, bar0 + off) == 8); }

static uint64_t region(int index, uint64_t *size, uint32_t *flags)
{
	struct vfio_region_info r = { .argsz = sizeof(r), .index = index };
	CHECK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r) == 0);
	*size = r.size;
	*flags = r.flags;
	return r.offset;
}

/* Wait for the interrupt: poll, then read the eventfd's counter. */
static uint64_t wait_irq(int efd)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n;
	CHECK(poll(&p, 1, 5000) == 1);
	CHECK(read(efd, &n, 8) == 8);
	return n;
}

static void dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram, int efd)
{
	wr64(0x80, src);
	wr64(0x88, dst);
	wr64(0x90, cnt);
	wr64(0x98, 1 | (to_ram ? 2 : 0) | 4); /* run, direction, interrupt when done */
	printf("dma %s: interrupts %lu, status %#x\n", to_ram ? "to RAM" : "to device",
	       (unsigned long)wait_irq(efd), rd32(0x24));
	wr32(0x64, 0x100); /* acknowledge */
}

int main(int argc, char **argv)
{
	char path[64];
	if (argc != 3) {
		fprintf(stderr, "usage: vmm_edu GROUP BDF\n");
		return 2;
	}
	/* what the host says about the group */
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/type", argv[1]);
	FILE *f = fopen(path, "r");
	CHECK(f && fgets(path, sizeof(path), f));
	fclose(f);
	printf("group %s type %s", argv[1], path);

	/* container, group, IOMMU */
	int container = open("/dev/vfio/vfio", O_RDWR);
	CHECK(ioctl(container, VFIO_GET_API_VERSION) == VFIO_API_VERSION);
	snprintf(path, sizeof(path), "/dev/vfio/%s", argv[1]);
	int group = open(path, O_RDWR);
	struct vfio_group_status st = { .argsz = sizeof(st) };
	CHECK(ioctl(group, VFIO_GROUP_GET_STATUS, &st) == 0 && st.flags & VFIO_GROUP_FLAGS_VIABLE);
	CHECK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0);
	CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0);

	/* guest RAM: page 0 is the DMA source, page 1 the destination */
	uint8_t *ram = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 4096; i++)
		ram[i] = (uint8_t)(i * 7 + 1);
	struct vfio_iommu_type1_dma_map map = { .argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)ram, .iova = IOVA, .size = 8192 };
	CHECK(ioctl(container, VFIO_IOMMU_MAP_DMA, &map) == 0);

	/* the device and its regions */
	dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	CHECK(dev >= 0);
	uint64_t size;
	uint32_t flags;
	cfg = region(VFIO_PCI_CONFIG_REGION_INDEX, &size, &flags);
	bar0 = region(VFIO_PCI_BAR0_REGION_INDEX, &size, &flags);
	printf("bar0: %lu KiB, %s\n", (unsigned long)(size >> 10),
	       flags & VFIO_REGION_INFO_FLAG_MMAP ? "mmap" : "pread/pwrite");
	uint16_t id[2], cmd;
	CHECK(pread(dev, id, 4, cfg) == 4);
	printf("device %04x:%04x\n", id[0], id[1]);
	CHECK(pread(dev, &cmd, 2, cfg + 4) == 2);
	cmd |= 0x6; /* memory space, bus master */
	CHECK(pwrite(dev, &cmd, 2, cfg + 4) == 2);

	/* edu's MSI vector into an eventfd */
	int efd = eventfd(0, EFD_CLOEXEC);
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)buf;
	*irq = (struct vfio_irq_set){ .argsz = sizeof(buf), .index = VFIO_PCI_MSI_IRQ_INDEX,
		.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, .count = 1 };
	memcpy(irq->data, &efd, sizeof(int));
	CHECK(ioctl(dev, VFIO_DEVICE_SET_IRQS, irq) == 0);

	/* registers: identification, liveness, factorial */
	printf("id %#x\n", rd32(0x00));
	wr32(0x04, 0x12345678);
	printf("liveness %#x\n", rd32(0x04));
	wr32(0x20, 0x80); /* interrupt when the factorial is done */
	wr32(0x08, 10);
	printf("10! = %u, interrupts %lu\n", rd32(0x08), (unsigned long)wait_irq(efd));
	wr32(0x64, 0x1);

	/* DMA: RAM page 0 -> edu's buffer -> RAM page 1 */
	dma(IOVA, EDU_BUF, 4096, 0, efd);
	dma(EDU_BUF, IOVA + 4096, 4096, 1, efd);
	int same = !memcmp(ram, ram + 4096, 4096);
	printf("dma copy %s\n", same ? "matches" : "DIFFERS");

	/* tear down: interrupts off, unmap, close */
	*irq = (struct vfio_irq_set){ .argsz = sizeof(*irq), .index = VFIO_PCI_MSI_IRQ_INDEX,
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER };
	CHECK(ioctl(dev, VFIO_DEVICE_SET_IRQS, irq) == 0);
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = IOVA,
		.size = 8192 };
	CHECK(ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0);
	close(dev);
	close(group);
	close(container);
	close(efd);
	return same ? 0 : 1;
}
