/* Pins its memory through iommufd (an IOAS map on a mock domain, a selftest access),
 * then dies of SIGKILL with everything open: the kernel releases it all on exit. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define T ';'
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct test_arg { uint32_t size, op, id, rsvd; uint32_t u[12]; uint32_t last, pad; };

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	uint32_t alloc[3] = { 12, 0, 0 };
	if (fd < 0 || ioctl(fd, _IO(T, 0x81), alloc))
		return 1;
	struct test_arg t = { .size = sizeof t, .op = 2, .id = alloc[2] };
	if (ioctl(fd, _IO(T, 0xa0), &t))
		return 2;
	uint8_t *buf = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	memset(buf, 1, 1 << 20);
	struct map_arg m = { sizeof m, 1 | 2 | 4, alloc[2], 0, (uintptr_t)buf, 1 << 20, 1 << 24 };
	if (ioctl(fd, _IO(T, 0x85), &m))
		return 3;
	memset(&t, 0, sizeof t);
	t.size = sizeof t;
	t.op = 5;
	t.id = alloc[2];
	if (ioctl(fd, _IO(T, 0xa0), &t))
		return 4;
	raise(SIGKILL);
	return 5;
}
