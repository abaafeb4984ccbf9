/* iommufd on the mock platform, as a selftest-style program would use it: its own
 * buffers mapped, the selftest access reading and writing them, a fork, errors.
 * Prints one line per call: "<step> <ret> <errno> <values...>" for the test to compare
 * with the model's answers to the same calls made from Python. Exits 0 when every
 * check on the data the program sees in its own memory holds. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define T ';'
#define CMD_DESTROY _IO(T, 0x80)
#define CMD_IOAS_ALLOC _IO(T, 0x81)
#define CMD_IOAS_IOVA_RANGES _IO(T, 0x84)
#define CMD_IOAS_MAP _IO(T, 0x85)
#define CMD_IOAS_UNMAP _IO(T, 0x86)
#define CMD_TEST _IO(T, 0x80 + 32)

#define MAP_FIXED_IOVA 1u
#define MAP_WRITEABLE 2u
#define MAP_READABLE 4u

enum { OP_MOCK_DOMAIN = 2, OP_MD_CHECK_MAP = 3, OP_MD_CHECK_REFS = 4,
       OP_CREATE_ACCESS = 5, OP_ACCESS_RW = 8 };
#define RW_WRITE 1u
#define RW_SLOW 4u

struct destroy_arg { uint32_t size, id; };
struct ioas_alloc_arg { uint32_t size, flags, out_ioas_id; };
struct range { uint64_t start, last; };
struct ranges_arg { uint32_t size, ioas_id, num_iovas, rsvd; uint64_t allowed, align; };
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct unmap_arg { uint32_t size, ioas_id; uint64_t iova, length; };
struct test_arg {
	uint32_t size, op, id, rsvd;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock;
		struct { uint64_t iova, length, uptr; } check_map;
		struct { uint64_t length, uptr; uint32_t refs; } check_refs;
		struct { uint32_t out_access_fd, flags; } access;
		struct { uint64_t iova, length, uptr; uint32_t flags; } rw;
		uint8_t raw[48];
	};
	uint32_t last;
	uint32_t pad;
};

static int failures;
static int fd;

static void check(int ok, const char *what)
{
	if (!ok) {
		printf("FAIL %s\n", what);
		failures++;
	}
}

static int call(unsigned long req, void *arg, int *err)
{
	int rc = ioctl(fd, req, arg);
	*err = rc < 0 ? errno : 0;
	return rc;
}

static int test(struct test_arg *t, uint32_t op, uint32_t id, int *err)
{
	t->size = sizeof(*t);
	t->op = op;
	t->id = id;
	return call(CMD_TEST, t, err);
}

static uint32_t ioas_alloc(const char *step)
{
	struct ioas_alloc_arg a = { .size = sizeof(a) };
	int err, rc = call(CMD_IOAS_ALLOC, &a, &err);
	printf("%s %d %d %u\n", step, rc, err, a.out_ioas_id);
	return a.out_ioas_id;
}

static void map(const char *step, uint32_t ioas, void *va, uint64_t len, uint64_t iova,
		uint32_t flags)
{
	struct map_arg m = { .size = sizeof(m), .flags = flags, .ioas_id = ioas,
			     .user_va = (uintptr_t)va, .length = len, .iova = iova };
	int err, rc = call(CMD_IOAS_MAP, &m, &err);
	printf("%s %d %d %#llx\n", step, rc, err, (unsigned long long)m.iova);
}

static void ranges(const char *step, uint32_t ioas)
{
	struct range r[8];
	struct ranges_arg a = { .size = sizeof(a), .ioas_id = ioas };
	int err, rc = call(CMD_IOAS_IOVA_RANGES, &a, &err);
	printf("%s-count %d %d %u\n", step, rc, err, a.num_iovas);
	memset(r, 0xa5, sizeof(r));
	a.allowed = (uintptr_t)r;
	rc = call(CMD_IOAS_IOVA_RANGES, &a, &err);
	printf("%s %d %d %u", step, rc, err, a.num_iovas);
	for (uint32_t i = 0; i < a.num_iovas && i < 8; i++)
		printf(" %#llx-%#llx", (unsigned long long)r[i].start,
		       (unsigned long long)r[i].last);
	printf("\n");
}

static int rw(const char *step, int access, uint64_t iova, void *buf, uint64_t len,
	      uint32_t flags)
{
	struct test_arg t = { .rw = { .iova = iova, .length = len, .uptr = (uintptr_t)buf,
				      .flags = flags } };
	int err, rc = test(&t, OP_ACCESS_RW, access, &err);
	printf("%s %d %d\n", step, rc, err);
	return rc;
}

int main(void)
{
	const uint64_t A = 1ull << 24;  /* MOCK_APERTURE_START */
	const size_t len = 64 * 1024;
	struct test_arg t;
	int err, rc;

	fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	printf("open %d %d\n", fd < 0 ? -1 : 0, fd < 0 ? errno : 0);
	if (fd < 0)
		return 1;
	uint32_t ioas = ioas_alloc("ioas_alloc");
	ranges("ranges_empty", ioas);

	memset(&t, 0, sizeof(t));
	rc = test(&t, OP_MOCK_DOMAIN, ioas, &err);
	printf("mock_domain %d %d %u %u %u\n", rc, err, t.mock.out_stdev_id,
	       t.mock.out_hwpt_id, t.mock.out_idev_id);
	uint32_t stdev = t.mock.out_stdev_id, hwpt = t.mock.out_hwpt_id;
	ranges("ranges_mock", ioas);

	/* an mmap'd buffer and a malloc'd one, both the program's own memory */
	uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *heap = malloc(len + 4096);
	uint8_t *hbuf = (uint8_t *)(((uintptr_t)heap + 4095) & ~(uintptr_t)4095);
	for (size_t i = 0; i < len; i++) {
		buf[i] = (uint8_t)(i * 7 + 3);
		hbuf[i] = (uint8_t)(i * 13 + 1);
	}
	map("map_mmap", ioas, buf, len, A, MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE);
	map("map_heap", ioas, hbuf, len, A + 0x100000,
	    MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE);
	map("map_bad_va", ioas, (void *)0x10000, len, A + 0x200000,
	    MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE);
	map("map_overlap", ioas, buf, len, A, MAP_FIXED_IOVA | MAP_READABLE);

	memset(&t, 0, sizeof(t));
	t.check_map.iova = A;
	t.check_map.length = len;
	t.check_map.uptr = (uintptr_t)buf;
	rc = test(&t, OP_MD_CHECK_MAP, hwpt, &err);
	printf("check_map %d %d\n", rc, err);
	memset(&t, 0, sizeof(t));
	t.check_refs.length = len;
	t.check_refs.uptr = (uintptr_t)hbuf;
	t.check_refs.refs = 1;
	rc = test(&t, OP_MD_CHECK_REFS, stdev, &err);
	printf("check_refs %d %d\n", rc, err);

	memset(&t, 0, sizeof(t));
	rc = test(&t, OP_CREATE_ACCESS, ioas, &err);
	int access = (int)t.access.out_access_fd;
	printf("create_access %d %d\n", rc, err);
	check(rc == 0 && fcntl(access, F_GETFD) == FD_CLOEXEC, "the access fd is open, cloexec");

	uint8_t out[300];
	/* read through the IOAS: the fast path copies from the user address, the slow
	 * one reads the pinned pages */
	memset(out, 0, sizeof(out));
	rw("rw_read", access, A + 100, out, sizeof(out), 0);
	check(memcmp(out, buf + 100, sizeof(out)) == 0, "fast read sees the buffer");
	memset(out, 0, sizeof(out));
	rw("rw_read_slow", access, A + 0x100000 + 4000, out, sizeof(out), RW_SLOW);
	check(memcmp(out, hbuf + 4000, sizeof(out)) == 0, "slow read sees the heap buffer");
	/* the program changes its buffer after the map: the device sees the new bytes */
	memcpy(buf + 8192, "written by the CPU after the map", 32);
	memset(out, 0, sizeof(out));
	rw("rw_read_slow_late", access, A + 8192, out, 32, RW_SLOW);
	check(memcmp(out, "written by the CPU after the map", 32) == 0, "late CPU write seen");
	/* writes through the IOAS land in the program's memory */
	static const char msg[] = "hello from the device";
	rw("rw_write_slow", access, A + 0x100000 + 4090, (void *)msg, sizeof(msg),
	   RW_WRITE | RW_SLOW);
	check(memcmp(hbuf + 4090, msg, sizeof(msg)) == 0, "slow write reached the heap buffer");
	rw("rw_write", access, A + 5, (void *)msg, sizeof(msg), RW_WRITE);
	check(memcmp(buf + 5, msg, sizeof(msg)) == 0, "fast write reached the buffer");
	rw("rw_read_bad_uptr", access, A, (void *)0x10000, 16, 0);
	rw("rw_unmapped_iova", access, A + 0x800000, out, 16, RW_SLOW);

	/* a child shares the iommufd: its own IOAS, its own buffer */
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		uint8_t *cbuf = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(cbuf, 0x5a, 8192);
		uint32_t cioas = ioas_alloc("child_ioas_alloc");
		map("child_map", cioas, cbuf, 8192, A, MAP_FIXED_IOVA | MAP_READABLE);
		struct unmap_arg u = { .size = sizeof(u), .ioas_id = cioas, .iova = A,
				       .length = 8192 };
		rc = call(CMD_IOAS_UNMAP, &u, &err);
		printf("child_unmap %d %d %#llx\n", rc, err, (unsigned long long)u.length);
		struct destroy_arg d = { .size = sizeof(d), .id = cioas };
		rc = call(CMD_DESTROY, &d, &err);
		printf("child_destroy %d %d\n", rc, err);
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child ok");

	/* garbage pointers */
	rc = call(CMD_IOAS_ALLOC, NULL, &err);
	printf("null_arg %d %d\n", rc, err);
	struct ranges_arg ra = { .size = sizeof(ra), .ioas_id = ioas, .num_iovas = 4,
				 .allowed = 0x10000 };
	rc = call(CMD_IOAS_IOVA_RANGES, &ra, &err);
	printf("ranges_bad_ptr %d %d %u\n", rc, err, ra.num_iovas);

	struct unmap_arg u = { .size = sizeof(u), .ioas_id = ioas, .iova = A, .length = len };
	rc = call(CMD_IOAS_UNMAP, &u, &err);
	printf("unmap %d %d %#llx\n", rc, err, (unsigned long long)u.length);
	close(access);
	struct destroy_arg d = { .size = sizeof(d), .id = stdev };
	rc = call(CMD_DESTROY, &d, &err);
	printf("destroy_stdev %d %d\n", rc, err);
	d.id = ioas;
	rc = call(CMD_DESTROY, &d, &err);
	printf("destroy_ioas %d %d\n", rc, err);
	close(fd);
	printf("done %d\n", failures);
	return failures ? 2 : 0;
}
