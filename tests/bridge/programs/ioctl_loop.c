/* Round trips through the bridge: N timed calls of each kind, median/p90/min in us.
 * usage: ioctl_loop N [KIND...]; KIND is one of
 *   nop       ECHO_NOP on the echo fd: trapped, answered, no user memory touched
 *   struct    ECHO_STRUCT: trapped, a 24-byte struct copied in and 8 bytes out
 *   continue  a ';' ioctl on /dev/null: trapped, not ours, CONTINUEd to the kernel
 *   fstat     fstat of a real fd (newfstatat, a path syscall): trapped, CONTINUEd
 *   getppid   not trapped at all: the filter's cost only
 * Prints "KIND median p90 min" per kind; "FAIL ..." when a call misbehaves. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ECHO_NOP 0x3bf0
#define ECHO_STRUCT 0x3bf1
struct echo { uint32_t argsz, flags; uint64_t in, out; };

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
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
	int fd = open("/dev/iommulab-test", O_RDWR);
	int null = open("/dev/null", O_RDWR);
	if (fd < 0 || null < 0 || !t) { printf("FAIL open errno %d\n", errno); return 1; }
	for (int k = 2; k < argc; k++) {
		const char *kind = argv[k];
		struct echo e = { sizeof e, 0, 0, 0 };
		struct stat st;
		for (int i = 0; i < n; i++) {
			long r;
			double a = now_ns();
			if (!strcmp(kind, "nop")) r = ioctl(fd, ECHO_NOP, 0);
			else if (!strcmp(kind, "struct")) { e.in = i; r = ioctl(fd, ECHO_STRUCT, &e); r |= e.out != (uint64_t)i + 1; }
			else if (!strcmp(kind, "continue")) r = ioctl(null, ECHO_NOP, 0) == -1 && errno == ENOTTY ? 0 : 1;
			else if (!strcmp(kind, "fstat")) r = fstat(null, &st);
			else if (!strcmp(kind, "getppid")) r = getppid() > 0 ? 0 : 1;
			else { printf("FAIL unknown kind %s\n", kind); return 2; }
			t[i] = now_ns() - a;
			if (r) { printf("FAIL %s call %d -> %ld errno %d\n", kind, i, r, errno); return 1; }
		}
		qsort(t, n, sizeof *t, cmp);
		printf("%s %.2f %.2f %.2f\n", kind, t[n / 2] / 1e3, t[n * 9 / 10] / 1e3, t[0] / 1e3);
	}
	return 0;
}
