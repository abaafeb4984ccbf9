/* Garbage pointers: every one must come back EFAULT, and the device must keep working. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define ECHO_NOP 0x3bf0
#define ECHO_STRUCT 0x3bf1
#define ECHO_COPY 0x3bf2
struct echo { uint32_t argsz, flags; uint64_t in, out; };
static int fails;
/* through a volatile so the compiler cannot see (and warn about) the garbage */
static void *volatile bad = (void *)16;
#define EFAULTS(name, call) do { errno = 0; long r_ = (long)(call); \
	if (r_ == -1 && errno == EFAULT) printf("ok %s\n", name); \
	else { printf("FAIL %s -> %ld errno %d\n", name, r_, errno); fails++; } } while (0)

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = open("/dev/iommulab-test", O_RDWR);
	/* a page that is mapped, then one that cannot be touched */
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	mprotect(p + 4096, 4096, PROT_NONE);
	char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	EFAULTS("null", ioctl(fd, ECHO_STRUCT, NULL));
	EFAULTS("one", ioctl(fd, ECHO_STRUCT, (void *)1));
	EFAULTS("kernel", ioctl(fd, ECHO_STRUCT, (void *)0xffff888000000000ull));
	EFAULTS("noncanonical", ioctl(fd, ECHO_STRUCT, (void *)0x0000900000000000ull));
	EFAULTS("hole", ioctl(fd, ECHO_STRUCT, p + 4096));
	EFAULTS("straddle", ioctl(fd, ECHO_STRUCT, p + 4096 - 8));
	memcpy(p + 4096 - sizeof(struct echo), &(struct echo){ sizeof(struct echo), 0, 1, 0 },
	       sizeof(struct echo));
	if (ioctl(fd, ECHO_STRUCT, p + 4096 - sizeof(struct echo)) != 0) { printf("FAIL edge\n"); fails++; }
	else printf("ok edge\n");
	struct { uint32_t len, pad; uint64_t src, dst; } c = { 16, 0, 8, (uintptr_t)p };
	EFAULTS("copy-src", ioctl(fd, ECHO_COPY, &c));
	c.src = (uintptr_t)p; c.dst = (uintptr_t)ro;
	EFAULTS("copy-dst-readonly", ioctl(fd, ECHO_COPY, &c));
	c.dst = (uintptr_t)(p + 4096 - 8);
	EFAULTS("copy-dst-straddle", ioctl(fd, ECHO_COPY, &c));
	EFAULTS("read-buf", read(fd, bad, 8));
	EFAULTS("pread-ro", pread(fd, ro, 8, 0));
	EFAULTS("write-buf", write(fd, bad, 8));
	EFAULTS("readv-iov", readv(fd, bad, 2));
	EFAULTS("fstat-buf", fstat(fd, bad));
	EFAULTS("stat-buf", stat("/dev/iommulab-test", (struct stat *)ro));
	EFAULTS("open-path", open(bad, O_RDONLY));
	EFAULTS("stat-path", stat(p + 4096, (struct stat *)p));
	if (ioctl(fd, ECHO_NOP, 0) != 0) { printf("FAIL after\n"); fails++; }
	printf("done %d\n", fails);
	return fails != 0;
}
