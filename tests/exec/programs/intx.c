/* INTx under exec with both eventfds real: the trigger the model signals, and the
 * unmask eventfd the model waits on (a virqfd). Usage: intx GROUP BDF (an edu device).
 * One line per step: "<step> <ret> <errno> [value]". */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int dev;

static void out(const char *step, long ret)
{
	printf("%s %ld %d\n", step, ret < 0 ? -1L : ret, ret < 0 ? errno : 0);
}

static int set_irq(uint32_t flags, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
	*s = (struct vfio_irq_set){ .argsz = sizeof(buf), .index = VFIO_PCI_INTX_IRQ_INDEX,
		.flags = VFIO_IRQ_SET_DATA_EVENTFD | flags, .count = 1 };
	memcpy(s->data, &fd, sizeof(int));
	return ioctl(dev, VFIO_DEVICE_SET_IRQS, s);
}

static void reg(uint64_t off, uint32_t v) { pwrite(dev, &v, 4, off); }

static long count(int fd)
{
	uint64_t n;
	return read(fd, &n, 8) == 8 ? (long)n : -1;
}

int main(int argc, char **argv)
{
	char path[64];
	if (argc != 3)
		return 2;
	int c = open("/dev/vfio/vfio", O_RDWR);
	snprintf(path, sizeof(path), "/dev/vfio/%s", argv[1]);
	int g = open(path, O_RDWR);
	ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
	ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
	dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
	int trigger = eventfd(0, EFD_NONBLOCK), unmask = eventfd(0, EFD_NONBLOCK);
	out("trigger", set_irq(VFIO_IRQ_SET_ACTION_TRIGGER, trigger));
	out("unmask_fd", set_irq(VFIO_IRQ_SET_ACTION_UNMASK, unmask));
	out("unmask_fd_again", set_irq(VFIO_IRQ_SET_ACTION_UNMASK, unmask)); /* EBUSY */
	reg(0x60, 0x100); /* edu raises INTx: signalled, then masked (automasked) */
	out("first", count(trigger));
	reg(0x64, 0x100); /* acknowledge: the line drops */
	reg(0x60, 0x100); /* raised again while masked: nothing yet */
	out("while_masked", count(trigger));
	uint64_t one = 1;
	out("write_unmask", write(unmask, &one, 8)); /* the model's virqfd unmasks */
	struct pollfd p = { .fd = trigger, .events = POLLIN };
	out("poll", poll(&p, 1, 5000)); /* the pending line fires at the unmask */
	out("after_unmask", count(trigger));
	out("unmask_consumed", count(unmask));
	reg(0x64, 0x100);
	out("unmask_off", set_irq(VFIO_IRQ_SET_ACTION_UNMASK, -1));
	reg(0x60, 0x100);
	out("third", count(trigger));
	reg(0x64, 0x100);
	reg(0x60, 0x100); /* masked again; the unmask eventfd is no longer watched */
	out("write_unmask_off", write(unmask, &one, 8));
	out("poll_off", poll(&p, 1, 200));
	out("unmask_kept", count(unmask));
	close(dev);
	close(g);
	close(c);
	printf("done\n");
	return 0;
}
