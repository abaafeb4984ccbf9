/* An iommufd fault queue on the mock platform (Linux 6.12), as a VMM's IOPF thread would
 * use it: a nested HWPT with a fault queue, the mock device replaced onto it, faults
 * triggered, read and answered through the fault fd. Prints one line per call:
 * "<step> <ret> <errno> <values...>". Exits 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define T ';'
#define CMD_DESTROY _IO(T, 0x80)
#define CMD_IOAS_ALLOC _IO(T, 0x81)
#define CMD_HWPT_ALLOC _IO(T, 0x89)
#define CMD_FAULT_QUEUE_ALLOC _IO(T, 0x8e)
#define CMD_TEST _IO(T, 0x80 + 32)

enum { OP_MOCK_DOMAIN = 2, OP_MOCK_DOMAIN_REPLACE = 10, OP_TRIGGER_IOPF = 15 };

struct destroy_arg { uint32_t size, id; };
struct ioas_alloc_arg { uint32_t size, flags, out_ioas_id; };
struct hwpt_alloc_arg {
	uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type, data_len;
	uint64_t data_uptr;
	uint32_t fault_id, rsvd2;
};
struct fault_alloc_arg { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct pgfault {
	uint32_t flags, dev_id, pasid, grpid, perm, rsvd;
	uint64_t addr;
	uint32_t length, cookie;
};
struct response { uint32_t cookie, code; };
struct test_arg {
	uint32_t size, op, id, rsvd;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock;
		struct { uint32_t pt_id; } replace;
		struct { uint32_t dev_id, pasid, grpid, perm; uint64_t addr; } iopf;
		uint8_t raw[48];
	};
	uint32_t last;
	uint32_t pad;
};

static int fd;
static void *volatile bad = (void *)8; /* an address the program has not mapped */

static void report(const char *step, long ret)
{
	printf("%s %ld %d\n", step, ret, ret < 0 ? errno : 0);
}

static int test_cmd(struct test_arg *cmd, uint32_t op, uint32_t id)
{
	cmd->size = 72;
	cmd->op = op;
	cmd->id = id;
	return ioctl(fd, CMD_TEST, cmd);
}

static uint32_t destroy(uint32_t id)
{
	struct destroy_arg d = { .size = sizeof(d), .id = id };
	return ioctl(fd, CMD_DESTROY, &d) ? errno : 0;
}

static void trigger(uint32_t dev_id, uint32_t grpid)
{
	struct test_arg cmd = { 0 };

	cmd.iopf.dev_id = dev_id;
	cmd.iopf.pasid = 1;
	cmd.iopf.grpid = grpid;
	cmd.iopf.perm = 3;
	cmd.iopf.addr = 0xdeadbeaf;
	report("trigger", test_cmd(&cmd, OP_TRIGGER_IOPF, 0));
}

static void read_one(int ffd, const char *step)
{
	struct pgfault f = { 0 };
	long n = read(ffd, &f, sizeof(f));

	printf("%s %ld %d flags=%u dev=%u pasid=%u grpid=%u perm=%u addr=%#llx cookie=%u\n",
	       step, n, n < 0 ? errno : 0, f.flags, f.dev_id, f.pasid, f.grpid, f.perm,
	       (unsigned long long)f.addr, f.cookie);
}

int main(void)
{
	struct ioas_alloc_arg ia = { .size = sizeof(ia) };
	struct test_arg md = { 0 }, rep = { 0 };
	struct hwpt_alloc_arg ha = { .size = sizeof(ha) };
	struct fault_alloc_arg fa = { .size = sizeof(fa) };
	uint32_t data = 0xbadbeef, parent, iopf;
	struct response resp[2];
	char path[64], link[64] = "";
	struct pgfault big[2];
	long n;

	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = open("/dev/iommu", O_RDWR);
	if (fd < 0 || ioctl(fd, CMD_IOAS_ALLOC, &ia) ||
	    test_cmd(&md, OP_MOCK_DOMAIN, ia.out_ioas_id)) {
		perror("setup");
		return 1;
	}
	ha.flags = 1; /* NEST_PARENT */
	ha.dev_id = md.mock.out_idev_id;
	ha.pt_id = ia.out_ioas_id;
	report("parent", ioctl(fd, CMD_HWPT_ALLOC, &ha));
	parent = ha.out_hwpt_id;

	fa.flags = 1;
	report("fault_alloc_flags", ioctl(fd, CMD_FAULT_QUEUE_ALLOC, &fa));
	fa.flags = 0;
	report("fault_alloc", ioctl(fd, CMD_FAULT_QUEUE_ALLOC, &fa));
	snprintf(path, sizeof(path), "/proc/self/fd/%u", fa.out_fault_fd);
	if (readlink(path, link, sizeof(link) - 1) < 0)
		strcpy(link, "?");
	printf("fault_fd %s cloexec=%d\n", link,
	       !!(fcntl(fa.out_fault_fd, F_GETFD) & FD_CLOEXEC));

	memset(&ha, 0, sizeof(ha));
	ha.size = sizeof(ha);
	ha.flags = 1u << 2; /* FAULT_ID_VALID */
	ha.dev_id = md.mock.out_idev_id;
	ha.pt_id = parent;
	ha.data_type = 0xdead;
	ha.data_len = sizeof(data);
	ha.data_uptr = (uintptr_t)&data;
	ha.fault_id = fa.out_fault_id;
	report("nested_iopf", ioctl(fd, CMD_HWPT_ALLOC, &ha));
	iopf = ha.out_hwpt_id;
	rep.replace.pt_id = iopf;
	report("replace_iopf", test_cmd(&rep, OP_MOCK_DOMAIN_REPLACE, md.mock.out_stdev_id));

	read_one(fa.out_fault_fd, "read_empty");
	trigger(md.mock.out_idev_id, 1);
	trigger(md.mock.out_idev_id, 2);
	trigger(md.mock.out_idev_id, 3);
	n = pread(fa.out_fault_fd, big, sizeof(big[0]), 0);
	report("pread", n);
	n = read(fa.out_fault_fd, big, sizeof(big[0]) - 1);
	report("read_short", n);
	n = read(fa.out_fault_fd, bad, sizeof(big[0]));
	report("read_efault", n);
	read_one(fa.out_fault_fd, "read_1");
	read_one(fa.out_fault_fd, "read_2"); /* the position stays 0 */
	n = read(fa.out_fault_fd, big, sizeof(big));
	printf("read_big %ld %d grpid=%u cookie=%u\n", n, n < 0 ? errno : 0, big[0].grpid,
	       big[0].cookie);

	resp[0].cookie = 2;
	resp[0].code = 0;
	resp[1].cookie = 99;
	resp[1].code = 0;
	report("write_partial", write(fa.out_fault_fd, resp, sizeof(resp)));
	report("write_unknown", write(fa.out_fault_fd, &resp[1], sizeof(resp[1])));
	resp[0].cookie = 1;
	resp[0].code = 7;
	report("write_code", write(fa.out_fault_fd, resp, sizeof(resp[0])));
	report("write_efault", write(fa.out_fault_fd, bad, sizeof(resp[0])));
	resp[0].code = 1;
	report("pwrite", pwrite(fa.out_fault_fd, resp, sizeof(resp[0]), 0));
	report("write_1", write(fa.out_fault_fd, resp, sizeof(resp[0])));

	printf("destroy_iopf_attached %u\n", destroy(iopf));
	rep.replace.pt_id = parent;
	report("replace_parent", test_cmd(&rep, OP_MOCK_DOMAIN_REPLACE, md.mock.out_stdev_id));
	resp[1].cookie = 3; /* read, never answered: answered INVALID by the replace */
	report("write_3_after_detach", write(fa.out_fault_fd, &resp[1], sizeof(resp[1])));
	printf("destroy_iopf %u\n", destroy(iopf));
	printf("destroy_fault_open %u\n", destroy(fa.out_fault_id));
	close(fa.out_fault_fd);
	printf("destroy_fault %u\n", destroy(fa.out_fault_id));
	printf("destroy_parent %u\n", destroy(parent));
	close(fd);
	return 0;
}
