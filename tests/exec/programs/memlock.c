/* Locked-memory accounting by the program's own limit and capability at the time of
 * the call: a forked child drops CAP_IPC_LOCK from its effective set and lowers
 * RLIMIT_MEMLOCK to 64K, then maps through the shared iommufd (a mock domain pins at
 * map time): 1M is refused (ENOMEM), 32K fits. The parent, unchanged, maps 1M.
 * Prints "<step> <ret> <errno>". */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define T ';'
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
static int fd;
static uint32_t ioas;

static void map(const char *step, size_t len, uint64_t iova)
{
	uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	memset(buf, 1, len);
	struct map_arg m = { sizeof m, 1 | 2 | 4, ioas, 0, (uintptr_t)buf, len, iova };
	int rc = ioctl(fd, _IO(T, 0x85), &m);
	printf("%s %d %d\n", step, rc, rc < 0 ? errno : 0);
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	fd = open("/dev/iommu", O_RDWR);
	uint32_t alloc[3] = { 12, 0, 0 };
	ioctl(fd, _IO(T, 0x81), alloc);
	ioas = alloc[2];
	uint32_t t[18] = { 72, 2, ioas };
	printf("mock_domain %d\n", ioctl(fd, _IO(T, 0xa0), t));
	pid_t pid = fork();
	if (pid == 0) {
		struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct d[2];
		syscall(SYS_capget, &h, d);
		d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
		syscall(SYS_capset, &h, d);
		struct rlimit rl = { 65536, 65536 };
		setrlimit(RLIMIT_MEMLOCK, &rl);
		map("child_map_1M", 1 << 20, 1ull << 24);
		map("child_map_32K", 32768, (1ull << 24) + (2 << 20));
		_exit(0);
	}
	waitpid(pid, NULL, 0);
	map("parent_map_1M", 1 << 20, (1ull << 24) + (4 << 20));
	close(fd);
	return 0;
}
