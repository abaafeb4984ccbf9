/* vmm_edu's DMA through the other uAPI: the device cdev bound to an iommufd, attached
 * to an IOAS holding the RAM. Usage: vmm_edu_cdev N (/dev/vfio/devices/vfioN, an edu).
 * The structs are 6.12's (linux/iommufd.h, linux/vfio.h), spelled out for older headers. */
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

#define IOVA 0x100000
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "line %d: %s\n", __LINE__, #c); exit(1); } } while (0)

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct bind { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach { uint32_t argsz, flags, pt_id; };

static int dev;

static void wr64(uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, off) == 8); }

static uint64_t wait_irq(int efd)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n;
	CHECK(poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8);
	return n;
}

int main(int argc, char **argv)
{
	char path[64];
	CHECK(argc == 2);
	int iommufd = open("/dev/iommu", O_RDWR);
	struct ioas_alloc a = { sizeof(a) };
	CHECK(ioctl(iommufd, _IO(';', 0x81), &a) == 0); /* IOMMU_IOAS_ALLOC */
	uint8_t *ram = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 4096; i++)
		ram[i] = (uint8_t)(i ^ 0x5a);
	struct ioas_map m = { sizeof(m), 1 | 2 | 4, a.out_ioas_id, 0, (uintptr_t)ram, 8192, IOVA };
	CHECK(ioctl(iommufd, _IO(';', 0x85), &m) == 0); /* IOMMU_IOAS_MAP, fixed IOVA, rw */

	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%s", argv[1]);
	dev = open(path, O_RDWR);
	struct bind b = { sizeof(b), 0, iommufd };
	CHECK(ioctl(dev, _IO(';', 100 + 18), &b) == 0); /* VFIO_DEVICE_BIND_IOMMUFD */
	struct attach at = { sizeof(at), 0, a.out_ioas_id };
	CHECK(ioctl(dev, _IO(';', 100 + 19), &at) == 0); /* VFIO_DEVICE_ATTACH_IOMMUFD_PT */
	/* the IOAS's id in, the automatic domain's HWPT id back */
	printf("ioas %u, devid %u, hwpt %u\n", a.out_ioas_id, b.out_devid, at.pt_id);

	uint16_t cmd = 6;
	CHECK(pwrite(dev, &cmd, 2, ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + 4) == 2);
	int efd = eventfd(0, EFD_CLOEXEC);
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)buf;
	*irq = (struct vfio_irq_set){ .argsz = sizeof(buf), .index = VFIO_PCI_MSI_IRQ_INDEX,
		.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, .count = 1 };
	memcpy(irq->data, &efd, sizeof(int));
	CHECK(ioctl(dev, VFIO_DEVICE_SET_IRQS, irq) == 0);

	wr64(0x80, IOVA); wr64(0x88, 0x40000); wr64(0x90, 4096); wr64(0x98, 1 | 4);
	printf("to device: interrupts %lu\n", (unsigned long)wait_irq(efd));
	wr64(0x80, 0x40000); wr64(0x88, IOVA + 4096); wr64(0x90, 4096); wr64(0x98, 1 | 2 | 4);
	printf("to RAM: interrupts %lu\n", (unsigned long)wait_irq(efd));
	int same = !memcmp(ram, ram + 4096, 4096);
	printf("dma copy %s\n", same ? "matches" : "DIFFERS");
	close(dev);
	close(iommufd);
	close(efd);
	return same ? 0 : 1;
}
