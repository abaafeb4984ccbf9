/* The device fd's read/write paths and eventfd delivery under exec, one line per step:
 * "<step> <ret> <errno> <values...>". Usage: devfd GROUP BDF (an edu device). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define CFG ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40)
#define BAR0 ((uint64_t)VFIO_PCI_BAR0_REGION_INDEX << 40)
#define ROM ((uint64_t)VFIO_PCI_ROM_REGION_INDEX << 40)

static void out(const char *step, long ret)
{
	printf("%s %ld %d\n", step, ret < 0 ? -1L : ret, ret < 0 ? errno : 0);
}

static int set_trigger(int dev, int index, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
	*s = (struct vfio_irq_set){ .argsz = sizeof(buf), .index = index, .count = 1,
		.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER };
	memcpy(s->data, &fd, sizeof(int));
	return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
}

static void raise_irq(int dev)
{
	uint32_t v = 0x100;
	pwrite(dev, &v, 4, BAR0 + 0x60); /* edu: raise */
	pwrite(dev, &v, 4, BAR0 + 0x64); /* acknowledge */
}

int main(int argc, char **argv)
{
	char path[64];
	uint32_t v = 0;
	uint8_t b[16];
	if (argc != 3)
		return 2;
	int c = open("/dev/vfio/vfio", O_RDWR);
	snprintf(path, sizeof(path), "/dev/vfio/%s", argv[1]);
	int g = open(path, O_RDWR);
	ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
	ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);

	struct vfio_region_info r = { .argsz = sizeof(r), .index = VFIO_PCI_BAR0_REGION_INDEX };
	long rc = ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &r);
	printf("bar0_info %ld %u %llx %llx\n", rc, r.flags, (unsigned long long)r.size,
	       (unsigned long long)r.offset);

	/* read and write at the file position, which moves on */
	out("lseek_cfg", lseek(d, CFG, SEEK_SET) == (off_t)CFG ? 0 : -1);
	uint16_t id[2];
	rc = read(d, id, 4);
	printf("read_id %ld %04x %04x\n", rc, id[0], id[1]);
	out("pos_after_read", lseek(d, 0, SEEK_CUR) - (off_t)CFG);
	lseek(d, BAR0 + 4, SEEK_SET);
	v = 0x0f0f0f0f;
	out("write_liveness", write(d, &v, 4));
	out("pos_after_write", lseek(d, 0, SEEK_CUR) - (off_t)BAR0);
	/* vectors: one call per segment */
	uint32_t fact = 5, got[2] = { 0, 0 };
	struct iovec wv[2] = { { &fact, 4 }, { &v, 4 } };
	out("pwritev_fact", pwritev(d, wv, 1, BAR0 + 8));
	struct iovec rv[2] = { { &got[0], 4 }, { &got[1], 4 } };
	rc = preadv(d, rv, 2, BAR0 + 4);
	printf("preadv %ld %x %u\n", rc, got[0], got[1]);
	lseek(d, CFG, SEEK_SET);
	uint8_t head[8];
	struct iovec hv[2] = { { head, 2 }, { head + 2, 6 } };
	rc = readv(d, hv, 2);
	printf("readv_cfg %ld %02x%02x %02x\n", rc, head[1], head[0], head[6]);
	out("pos_after_readv", lseek(d, 0, SEEK_CUR) - (off_t)CFG);

	/* the kernel's errors */
	out("pread_bar_end", pread(d, &v, 4, BAR0 + r.size));
	out("pread_bar_tail", pread(d, b, 16, BAR0 + r.size - 8)); /* cut to the BAR's end */
	out("pwrite_rom", pwrite(d, &v, 4, ROM));
	out("pread_rom", pread(d, &v, 4, ROM));
	out("pread_bar1", pread(d, &v, 4, BAR0 + (1ULL << 40)));
	out("pread_no_region", pread(d, &v, 4, 20ULL << 40));
	out("pread_negative", pread(d, &v, 4, -1));
	void *volatile bad = (void *)8, *volatile kernel = (void *)0xffff800000000000ULL;
	out("pread_bad_buffer", pread(d, bad, 4, BAR0));
	out("pread_kernel_buffer", pread(d, kernel, 4, BAR0));
	uint8_t *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	out("pread_readonly_buffer", pread(d, ro, 4, BAR0));
	/* a buffer that faults part-way: the 8-byte access before the fault is done */
	uint8_t *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	munmap(two + 4096, 4096);
	uint64_t src = 0x40100;
	memcpy(two + 4096 - 8, &src, 8);
	out("pwrite_faulting", pwrite(d, two + 4096 - 8, 16, BAR0 + 0x80));
	uint64_t dma_src = 0;
	pread(d, &dma_src, 8, BAR0 + 0x80);
	printf("dma_src %llx\n", (unsigned long long)dma_src);
	out("read_group", read(g, b, 4));
	out("write_container", write(c, b, 4));
	out("mmap_bar0", (long)mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, d, BAR0)
	    == -1 ? -1 : 0);
	out("mmap_private", (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, d, BAR0) == -1 ? -1 : 0);
	out("mmap_container", (long)mmap(NULL, 4096, PROT_READ, MAP_SHARED, c, 0) == -1 ? -1 : 0);

	/* eventfds: the model signals the program's own; one eventfd for two triggers */
	v = 0x6;
	pwrite(d, &v, 2, CFG + 4);
	int p[2];
	pipe(p);
	out("trigger_pipe", set_trigger(d, VFIO_PCI_MSI_IRQ_INDEX, p[0]));
	out("trigger_closed", set_trigger(d, VFIO_PCI_MSI_IRQ_INDEX, 500));
	int e = eventfd(0, EFD_NONBLOCK | EFD_SEMAPHORE);
	int e2 = dup(e);
	out("trigger_msi", set_trigger(d, VFIO_PCI_MSI_IRQ_INDEX, e2));
	close(e2); /* the model holds the eventfd itself */
	out("trigger_req", set_trigger(d, VFIO_PCI_REQ_IRQ_INDEX, e));
	uint64_t n = 0;
	out("read_before", read(e, &n, 8));
	raise_irq(d);
	raise_irq(d);
	raise_irq(d);
	struct pollfd pf = { .fd = e, .events = POLLIN };
	out("poll", poll(&pf, 1, 1000));
	int reads = 0;
	while (read(e, &n, 8) == 8)
		reads++;
	printf("semaphore_reads %d\n", reads);
	/* a forked child's interrupt reaches the same eventfd */
	pid_t child = fork();
	if (child == 0) {
		raise_irq(d);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	out("after_child", read(e, &n, 8));
	/* the fd in the model's hands was released with the trigger: no more signals */
	char off[sizeof(struct vfio_irq_set)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)off;
	*s = (struct vfio_irq_set){ .argsz = sizeof(off), .index = VFIO_PCI_MSI_IRQ_INDEX,
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER };
	out("msi_off", ioctl(d, VFIO_DEVICE_SET_IRQS, s));
	raise_irq(d);
	out("read_after_off", read(e, &n, 8));
	close(d);
	close(g);
	close(c);
	printf("done\n");
	return 0;
}
