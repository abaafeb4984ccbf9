/* Round trips of model ioctls under iommulab exec: N timed calls of each kind.
 * usage: model_ioctl_loop N [KIND...]; KIND is one of
 *   version   VFIO_GET_API_VERSION on /dev/vfio/vfio: no user memory
 *   option    IOMMU_OPTION (get RLIMIT_MODE): a 24-byte struct in and out
 *   ranges    IOMMU_IOAS_IOVA_RANGES: the struct, and the range array through its pointer
 *   enoent    IOMMU_DESTROY of an id that does not exist: the error path
 *   mapunmap  IOMMU_IOAS_MAP then IOMMU_IOAS_UNMAP of one page of the program (two calls)
 *   barread   pread of 4 bytes of BAR 0 (edu's liveness register) on group 0's device
 *   barwrite  pwrite of 4 bytes of BAR 0 (the same register)
 *   msi       edu raises its MSI (a BAR 0 pwrite), the program reads its eventfd
 * (the device kinds need an edu at 0000:00:02.0 in group 0)
 * Prints "KIND median p90 min" (us) per kind; "FAIL ..." when a call misbehaves. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define T ';'
struct option_arg { uint32_t size, option; uint16_t op, rsvd; uint32_t object_id; uint64_t val64; };
struct ranges_arg { uint32_t size, ioas_id, num_iovas, rsvd; uint64_t allowed, align; };
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct unmap_arg { uint32_t size, ioas_id; uint64_t iova, length; };

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* Group 0's device fd through a type1 container, bus mastering on, edu's MSI into an
 * eventfd (*efd); -1 on failure. */
static int edu_device(int c, int *efd)
{
	int g = open("/dev/vfio/0", O_RDWR);
	if (g < 0 || ioctl(g, _IO(T, 104), &c) || ioctl(c, _IO(T, 102), 3)) /* SET_CONTAINER, */
		return -1;                                                   /* SET_IOMMU v2 */
	int d = ioctl(g, _IO(T, 106), "0000:00:02.0"); /* GROUP_GET_DEVICE_FD */
	uint16_t cmd = 6;
	if (d < 0 || pwrite(d, &cmd, 2, (7ull << 40) + 4) != 2)
		return -1;
	*efd = eventfd(0, 0);
	struct { uint32_t argsz, flags, index, start, count; int32_t fd; } s = {
		sizeof s, 4 | 32, 1, 0, 1, *efd }; /* DATA_EVENTFD | ACTION_TRIGGER, MSI */
	return ioctl(d, _IO(T, 110), &s) ? -1 : d; /* DEVICE_SET_IRQS */
}

static int cmp(const void *a, const void *b)
{
	double d = *(const double *)a - *(const double *)b;
	return d < 0 ? -1 : d > 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	double *t = calloc(n, sizeof *t);
	int c = open("/dev/vfio/vfio", O_RDWR);
	int fd = open("/dev/iommu", O_RDWR);
	if (c < 0 || fd < 0 || !t) { printf("FAIL open errno %d\n", errno); return 1; }
	uint32_t alloc[3] = { 12, 0, 0 };
	if (ioctl(fd, _IO(T, 0x81), alloc)) { printf("FAIL IOAS_ALLOC %d\n", errno); return 1; }
	uint32_t ioas = alloc[2];
	uint64_t ranges[16];
	uint8_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	page[0] = 1;
	int dev = -1, efd = -1;
	uint32_t reg = 0x100;
	uint64_t count;
	for (int k = 2; k < argc; k++) {
		if (dev < 0 && (!strcmp(argv[k], "barread") || !strcmp(argv[k], "barwrite") ||
				!strcmp(argv[k], "msi")) && (dev = edu_device(c, &efd)) < 0) {
			printf("FAIL edu device errno %d\n", errno);
			return 1;
		}
		const char *kind = argv[k];
		for (int i = 0; i < n; i++) {
			long r = 0;
			double a = now_ns();
			if (!strcmp(kind, "version")) {
				r = ioctl(c, _IO(T, 100), 0);
			} else if (!strcmp(kind, "option")) {
				struct option_arg o = { sizeof o, 0, 1, 0, 0, 0 };
				r = ioctl(fd, _IO(T, 0x87), &o);
			} else if (!strcmp(kind, "ranges")) {
				struct ranges_arg g = { sizeof g, ioas, 8, 0, (uintptr_t)ranges, 0 };
				r = ioctl(fd, _IO(T, 0x84), &g);
				r |= g.num_iovas < 1;
			} else if (!strcmp(kind, "enoent")) {
				uint32_t d[2] = { 8, 0 };
				r = ioctl(fd, _IO(T, 0x80), d) == -1 && errno == ENOENT ? 0 : 1;
			} else if (!strcmp(kind, "mapunmap")) {
				struct map_arg m = { sizeof m, 1 | 2 | 4, ioas, 0, (uintptr_t)page, 4096,
						     1ull << 32 };
				struct unmap_arg u = { sizeof u, ioas, 1ull << 32, 4096 };
				r = ioctl(fd, _IO(T, 0x85), &m) | ioctl(fd, _IO(T, 0x86), &u);
			} else if (!strcmp(kind, "barread")) {
				r = pread(dev, &reg, 4, 0x04) != 4;
			} else if (!strcmp(kind, "barwrite")) {
				r = pwrite(dev, &reg, 4, 0x04) != 4;
			} else if (!strcmp(kind, "msi")) {
				reg = 0x100; /* edu: raise, then the interrupt arrives */
				r = pwrite(dev, &reg, 4, 0x60) != 4 || read(efd, &count, 8) != 8;
			} else {
				printf("FAIL unknown kind %s\n", kind);
				return 2;
			}
			t[i] = now_ns() - a;
			if (r) { printf("FAIL %s call %d -> %ld errno %d\n", kind, i, r, errno); return 1; }
		}
		qsort(t, n, sizeof *t, cmp);
		printf("%s %.2f %.2f %.2f\n", kind, t[n / 2] / 1e3, t[n * 9 / 10] / 1e3, t[0] / 1e3);
	}
	return 0;
}
