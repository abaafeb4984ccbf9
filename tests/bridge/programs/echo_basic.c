/* Opens the echo device and exercises what a VFIO/iommufd program does with an fd:
 * ioctls with structs and inner pointers, fstat/stat, pread/read/write, mmap, dup,
 * readlink of /proc/self/fd. Prints one "ok NAME" line per check, "FAIL ..." otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#define ECHO_NOP 0x3bf0
#define ECHO_STRUCT 0x3bf1
#define ECHO_COPY 0x3bf2
#define ECHO_PID 0x3bf4
struct echo { uint32_t argsz, flags; uint64_t in, out; };

static int fails;
#define CHECK(name, cond) do { if (cond) printf("ok %s\n", name); \
    else { printf("FAIL %s (errno %d)\n", name, errno); fails++; } } while (0)

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = open("/dev/iommulab-test", O_RDWR | O_CLOEXEC);
	CHECK("open", fd >= 0);
	CHECK("nop", ioctl(fd, ECHO_NOP, 0) == 0);
	struct echo e = { sizeof(e), 0, 41, 0 };
	CHECK("struct", ioctl(fd, ECHO_STRUCT, &e) == 0 && e.out == 42);
	e.flags = 1;
	CHECK("struct-einval", ioctl(fd, ECHO_STRUCT, &e) == -1 && errno == EINVAL);
	char src[32] = "hello through the bridge", dst[32] = { 0 };
	struct { uint32_t len, pad; uint64_t src, dst; } c = { 25, 0, (uintptr_t)src, (uintptr_t)dst };
	CHECK("copy", ioctl(fd, ECHO_COPY, &c) == 25 && strcmp(dst, src) == 0);
	CHECK("pid", ioctl(fd, ECHO_PID, 0) == getpid());
	CHECK("enotty", ioctl(fd, 0x3bff, 0) == -1 && errno == ENOTTY);
	CHECK("tty-ioctl", ioctl(fd, 0x5401 /* TCGETS */, &e) == -1 && errno == ENOTTY);
	struct stat st;
	CHECK("fstat", fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 240);
	CHECK("stat", stat("/dev/iommulab-test", &st) == 0 && S_ISCHR(st.st_mode));
	CHECK("stat-dots", stat("//dev/./iommulab-test", &st) == 0 && S_ISCHR(st.st_mode));
	CHECK("access", access("/dev/iommulab-test", R_OK | W_OK) == 0);
	unsigned char buf[16];
	CHECK("pread", pread(fd, buf, 8, 0x100) == 8 && buf[0] == 0x00 && buf[7] == 0x07);
	CHECK("read", read(fd, buf, 4) == 4 && buf[0] == 0 && read(fd, buf, 4) == 4 && buf[0] == 4);
	CHECK("lseek-pos", lseek(fd, 0, SEEK_CUR) == 8);
	CHECK("write", write(fd, "abc", 3) == 3);
	struct iovec iov[2] = { { buf, 2 }, { buf + 2, 3 } };
	CHECK("preadv", preadv(fd, iov, 2, 10) == 5 && buf[0] == 10 && buf[4] == 14);
	char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK("mmap", m != MAP_FAILED && memcmp(m, "ECHO", 4) == 0);
	CHECK("mmap-einval", mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EINVAL);
	int d = dup(fd);
	CHECK("dup", d >= 0 && d != fd && ioctl(d, ECHO_NOP, 0) == 0 && fstat(d, &st) == 0 && S_ISCHR(st.st_mode));
	int d2 = dup2(fd, 7);
	CHECK("dup2", d2 == 7 && ioctl(7, ECHO_NOP, 0) == 0);
	int d3 = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	CHECK("fdupfd", d3 >= 0 && (fcntl(d3, F_GETFD) & FD_CLOEXEC) && pread(d3, buf, 1, 3) == 1 && buf[0] == 3);
	char link[64], path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof link - 1);
	CHECK("readlink", n == 18 && memcmp(link, "/dev/iommulab-test", 18) == 0);
	int r = open(path, O_RDONLY);
	CHECK("reopen", r >= 0 && r != fd && ioctl(r, ECHO_NOP, 0) == 0);
	CHECK("ftruncate", ftruncate(fd, 0) == -1 && errno == EINVAL);
	CHECK("enoent", open("/dev/iommulab-none", O_RDWR) == -1 && errno == ENOENT);
	CHECK("real-file", open("/etc/hostname", O_RDONLY) >= 0 || errno == ENOENT);
	close(r); close(d3); close(d2); close(d); munmap(m, 4096); close(fd);
	printf("done %d\n", fails);
	return fails != 0;
}
