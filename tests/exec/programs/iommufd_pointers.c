/* The pointers inside iommufd structs, each to the program's own memory: the
 * IOAS_ALLOW_IOVAS array, GET_HW_INFO's data, the selftest's DIRTY bitmap and
 * HWPT_GET_DIRTY_BITMAP's output, each also with a pointer that faults.
 * Prints "<step> <ret> <errno> <values...>" per call. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define T ';'
#define A (1ull << 24)
static int fd;

static int io(unsigned long nr, void *arg, int *err)
{
	int rc = ioctl(fd, _IO(T, nr), arg);
	*err = rc < 0 ? errno : 0;
	return rc;
}

struct range { uint64_t start, last; };
struct allow { uint32_t size, ioas_id, num_iovas, rsvd; uint64_t allowed; };
struct hw_info { uint32_t size, flags, dev_id, data_len; uint64_t data_uptr;
		 uint32_t out_type, rsvd; uint64_t out_caps; };
struct hwpt_alloc { uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type,
		    data_len; uint64_t data_uptr; uint32_t fault_id, rsvd2; };
struct set_dirty { uint32_t size, flags, hwpt_id, rsvd; };
struct get_dirty { uint32_t size, hwpt_id, flags, rsvd; uint64_t iova, length, page_size,
		   data; };
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct test_arg {
	uint32_t size, op, id, rsvd;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock;
		struct { uint32_t flags, pad; uint64_t iova, length, page_size, uptr,
			 out_nr_dirty; } dirty;
		uint8_t raw[48];
	};
	uint32_t last, pad;
};

int main(void)
{
	int err, rc;
	fd = open("/dev/iommu", O_RDWR);
	uint32_t alloc[3] = { 12, 0, 0 };
	io(0x81, alloc, &err);
	uint32_t ioas = alloc[2];

	struct range allowed[2] = { { A, A + 0x3fffff }, { A + 0x1000000, A + 0x1ffffff } };
	struct allow al = { sizeof al, ioas, 2, 0, (uintptr_t)allowed };
	rc = io(0x82, &al, &err);
	printf("allow_iovas %d %d\n", rc, err);
	al.allowed = 0x10000;
	rc = io(0x82, &al, &err);
	printf("allow_iovas_bad_ptr %d %d\n", rc, err);

	struct test_arg t = { .size = sizeof t, .op = 2, .id = ioas };
	rc = io(0xa0, &t, &err);
	uint32_t idev = t.mock.out_idev_id;
	printf("mock_domain %d %d %u %u %u\n", rc, err, t.mock.out_stdev_id, t.mock.out_hwpt_id,
	       idev);

	uint8_t info[64];
	memset(info, 0xee, sizeof info);
	struct hw_info hi = { sizeof hi, 0, idev, sizeof info, (uintptr_t)info };
	rc = io(0x8a, &hi, &err);
	int left = 0;
	for (unsigned i = 0; i < sizeof info; i++)
		left += info[i] == 0xee;
	uint32_t regval;
	memcpy(&regval, info + 4, 4);  /* test_reg */
	printf("hw_info %d %d %#x %llu %u %#x %d\n", rc, err, hi.out_type,
	       (unsigned long long)hi.out_caps, hi.data_len, regval, left);
	hi.data_uptr = 0x10000;
	rc = io(0x8a, &hi, &err);
	printf("hw_info_bad_ptr %d %d\n", rc, err);

	struct hwpt_alloc ha = { sizeof ha, 1u << 1, idev, ioas };
	rc = io(0x89, &ha, &err);
	uint32_t hwpt = ha.out_hwpt_id;
	printf("hwpt_alloc_dirty %d %d %u\n", rc, err, hwpt);

	uint8_t *buf = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	memset(buf, 1, 65536);
	struct map_arg m = { sizeof m, 1 | 2 | 4, ioas, 0, (uintptr_t)buf, 65536, A };
	rc = io(0x85, &m, &err);
	printf("map %d %d\n", rc, err);
	m.iova = A + 0x800000;
	rc = io(0x85, &m, &err);
	printf("map_not_allowed %d %d\n", rc, err);

	struct set_dirty sd = { sizeof sd, 1, hwpt, 0 };
	rc = io(0x8b, &sd, &err);
	printf("set_dirty_tracking %d %d\n", rc, err);

	uint64_t marks = 0x80000005;  /* 2K pages 0, 2 and 31 */
	memset(&t, 0, sizeof t);
	t.dirty.iova = A;
	t.dirty.length = 65536;
	t.dirty.page_size = 2048;  /* the mock's IO page */
	t.dirty.uptr = (uintptr_t)&marks;
	t.size = sizeof t;
	t.op = 13;
	t.id = hwpt;
	rc = io(0xa0, &t, &err);
	printf("test_dirty %d %d %llu\n", rc, err, (unsigned long long)t.dirty.out_nr_dirty);
	t.dirty.uptr = 0x10000;
	rc = io(0xa0, &t, &err);
	printf("test_dirty_bad_ptr %d %d\n", rc, err);

	uint64_t bitmap[2] = { 0, 0 };
	struct get_dirty gd = { sizeof gd, hwpt, 0, 0, A, 65536, 4096, (uintptr_t)bitmap };
	rc = io(0x8c, &gd, &err);
	printf("get_dirty_bitmap %d %d %#llx\n", rc, err, (unsigned long long)bitmap[0]);
	gd.data = 0x10000;
	rc = io(0x8c, &gd, &err);
	printf("get_dirty_bitmap_bad_ptr %d %d\n", rc, err);
	close(fd);
	printf("done\n");
	return 0;
}
