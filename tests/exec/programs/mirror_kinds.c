/* The kinds of memory a program maps, pinned through iommufd on the mock platform and
 * read and written by the selftest access's slow path (the pinned pages themselves):
 * a memfd mapped twice (MAP_SHARED, one page cache), MAP_SHARED|MAP_ANONYMOUS memory
 * shared with a forked child, a read-only mapping, a range with a hole, a buffer the
 * program grows with mremap, one mprotect'ed between two maps, a 2M THP-eligible
 * region, and a thread making the calls.
 * Prints "<step> <ret> <errno>" per call and "FAIL ..." when the data is wrong. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define T ';'
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct unmap_arg { uint32_t size, ioas_id; uint64_t iova, length; };
struct test_arg {
	uint32_t size, op, id, rsvd;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock;
		struct { uint32_t out_access_fd, flags; } access;
		struct { uint64_t iova, length, uptr; uint32_t flags; } rw;
		uint8_t raw[48];
	};
	uint32_t last, pad;
};
#define A (1ull << 24)
#define RW (1u | 2u | 4u)

static int fd, access_fd, failures;
static uint32_t ioas;

static void check(int ok, const char *what)
{
	if (!ok) {
		printf("FAIL %s\n", what);
		failures++;
	}
}

static int map(const char *step, void *va, uint64_t len, uint64_t iova, uint32_t flags)
{
	struct map_arg m = { sizeof m, flags, ioas, 0, (uintptr_t)va, len, iova };
	int rc = ioctl(fd, _IO(T, 0x85), &m);
	printf("%s %d %d\n", step, rc, rc < 0 ? errno : 0);
	return rc;
}

static void unmap(uint64_t iova, uint64_t len)
{
	struct unmap_arg u = { sizeof u, ioas, iova, len };
	if (ioctl(fd, _IO(T, 0x86), &u))
		check(0, "unmap");
}

static int rw(uint64_t iova, void *buf, uint64_t len, int write)
{
	struct test_arg t = { .size = sizeof t, .op = 8, .id = access_fd,
			      .rw = { iova, len, (uintptr_t)buf, 4u | (write ? 1u : 0u) } };
	return ioctl(fd, _IO(T, 0xa0), &t);
}

static void *thread_main(void *arg)
{
	uint8_t *buf = arg;
	if (map("thread_map", buf, 4096, A + 0x700000, RW) == 0) {
		check(rw(A + 0x700000 + 10, "thread", 6, 1) == 0, "thread rw");
		check(memcmp(buf + 10, "thread", 6) == 0, "thread write seen");
		unmap(A + 0x700000, 4096);
	}
	return NULL;
}

int main(void)
{
	char out[64];
	setvbuf(stdout, NULL, _IONBF, 0);
	fd = open("/dev/iommu", O_RDWR);
	uint32_t alloc[3] = { 12, 0, 0 };
	ioctl(fd, _IO(T, 0x81), alloc);
	ioas = alloc[2];
	struct test_arg t = { .size = sizeof t, .op = 2, .id = ioas };
	printf("mock_domain %d\n", ioctl(fd, _IO(T, 0xa0), &t));
	uint32_t stdev = t.mock.out_stdev_id;
	memset(&t, 0, sizeof t);
	t.size = sizeof t;
	t.op = 5;
	t.id = ioas;
	printf("create_access %d\n", ioctl(fd, _IO(T, 0xa0), &t));
	access_fd = (int)t.access.out_access_fd;

	/* a memfd mapped twice: a device write through one mapping shows in the other */
	int mfd = memfd_create("guest-ram", 0);
	ftruncate(mfd, 16384);
	uint8_t *m1 = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	uint8_t *m2 = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 8192);
	if (map("map_memfd", m1, 16384, A, RW) == 0) {
		check(rw(A + 8192 + 100, "via the memfd", 13, 1) == 0, "memfd rw");
		check(memcmp(m2 + 100, "via the memfd", 13) == 0, "memfd write seen twice");
		memcpy(m2 + 200, "cpu side", 8);
		check(rw(A + 8192 + 200, out, 8, 0) == 0 && memcmp(out, "cpu side", 8) == 0,
		      "memfd read sees the other mapping");
		unmap(A, 16384);
	}

	/* shared anonymous memory: a child writes, the device reads what it wrote */
	uint8_t *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (map("map_shared_anon", sh, 4096, A + 0x100000, RW) == 0) {
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			memcpy(sh + 300, "from the child", 14);
			_exit(0);
		}
		waitpid(pid, NULL, 0);
		check(rw(A + 0x100000 + 300, out, 14, 0) == 0 &&
		      memcmp(out, "from the child", 14) == 0, "shared anon read");
		unmap(A + 0x100000, 4096);
	}

	/* read-only memory: readable mapping fine, writeable one refused */
	uint8_t *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map("map_ro_readable", ro, 4096, A + 0x200000, 4u | 1u) == 0)
		unmap(A + 0x200000, 4096);
	map("map_ro_writeable", ro, 4096, A + 0x200000, RW);

	/* a hole in the middle */
	uint8_t *h = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	munmap(h + 4096, 4096);
	map("map_hole", h, 3 * 4096, A + 0x300000, RW);

	/* a buffer the program grows (mremap) between two maps */
	uint8_t *g = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(g + 4096, 4096);  /* room to grow into */
	memset(g, 0x33, 4096);
	map("map_before_grow", g, 4096, A + 0x400000, RW);
	uint8_t *g2 = mremap(g, 4096, 8192, 0);
	check(g2 == g, "grown in place");
	if (g2 != g)
		return 3;
	memset(g2 + 4096, 0x44, 4096);
	map("map_after_grow", g2, 8192, A + 0x500000, RW);
	check(rw(A + 0x400000, out, 4, 0) == 0 && out[0] == 0x33, "first page still pinned");
	check(rw(A + 0x500000 + 4096, out, 4, 0) == 0 && out[0] == 0x44, "grown page");
	unmap(A + 0x400000, 4096);
	unmap(A + 0x500000, 8192);

	/* mprotect between two maps of one buffer: its pages stay the pinned pages */
	uint8_t *pb = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	memset(pb, 0x55, 8192);
	map("map_before_mprotect", pb, 8192, A + 0x600000, RW);
	mprotect(pb, 8192, PROT_READ);
	map("map_readonly_after_mprotect", pb, 8192, A + 0x680000, 4u | 1u);
	mprotect(pb, 8192, PROT_READ | PROT_WRITE);
	memcpy(pb + 4096, "after mprotect", 14);
	check(rw(A + 0x600000 + 4096, out, 14, 0) == 0 && memcmp(out, "after mprotect", 14) == 0,
	      "the first map's pages are still the buffer's");
	struct test_arg refs = { .size = sizeof refs, .op = 4, .id = stdev };
	memcpy(refs.raw, &(uint64_t){ 8192 }, 8);
	memcpy(refs.raw + 8, &(uint64_t){ (uintptr_t)pb }, 8);
	memcpy(refs.raw + 16, &(uint32_t){ 2 }, 4);
	int rrc = ioctl(fd, _IO(T, 0xa0), &refs);
	printf("check_refs_two_maps %d %d\n", rrc, rrc < 0 ? errno : 0);
	unmap(A + 0x600000, 8192);
	unmap(A + 0x680000, 8192);

	/* 2 MiB of THP-eligible memory */
	uint8_t *big = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	big = (uint8_t *)(((uintptr_t)big + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
	madvise(big, 2 << 20, MADV_HUGEPAGE);
	big[(2 << 20) - 1] = 0x77;
	if (map("map_thp", big, 2 << 20, A + 0x800000, RW) == 0) {
		check(rw(A + 0x800000 + (2 << 20) - 1, out, 1, 0) == 0 && out[0] == 0x77, "thp");
		unmap(A + 0x800000, 2 << 20);
	}

	/* the calls of a thread */
	pthread_t th;
	uint8_t *tb = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pthread_create(&th, NULL, thread_main, tb);
	pthread_join(th, NULL);

	close(access_fd);
	close(fd);
	printf("done %d\n", failures);
	return failures ? 2 : 0;
}
