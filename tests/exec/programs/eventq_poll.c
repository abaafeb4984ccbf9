/* Waiting on an iommufd event queue's fd with poll, ppoll, select, pselect and epoll, as
 * a VMM's event thread does, on the mock platform: "fault" is 6.12's fault queue
 * (IOMMU_FAULT_QUEUE_ALLOC, fed by TRIGGER_IOPF), "veventq" is 7.0's vEVENTQ
 * (IOMMU_VEVENTQ_ALLOC, fed by TRIGGER_VEVENT). The kernel's rule
 * (iommufd_fault_fops_poll, 7.0's iommufd_eventq_fops_poll): EPOLLIN | EPOLLRDNORM
 * while a record waits to be read, EPOLLOUT always for a fault queue, never for a
 * vEVENTQ. Waits with a timeout end when another thread or process queues a record.
 * Prints one line per check; exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define T ';'
#define CMD_IOAS_ALLOC _IO(T, 0x81)
#define CMD_HWPT_ALLOC _IO(T, 0x89)
#define CMD_FAULT_QUEUE_ALLOC _IO(T, 0x8e)
#define CMD_VIOMMU_ALLOC _IO(T, 0x90)
#define CMD_VDEVICE_ALLOC _IO(T, 0x91)
#define CMD_VEVENTQ_ALLOC _IO(T, 0x93)
#define CMD_TEST _IO(T, 0x80 + 32)

enum {
	OP_MOCK_DOMAIN = 2, OP_MOCK_DOMAIN_REPLACE = 10, OP_TRIGGER_IOPF = 15,
	OP_TRIGGER_VEVENT = 17,
};
#define WAIT_MS 30000 /* long enough never to pass: a wait ends on its event */

struct ioas_alloc_arg { uint32_t size, flags, out_ioas_id; };
struct hwpt_alloc_arg {
	uint32_t size, flags, dev_id, pt_id, out_hwpt_id, rsvd, data_type, data_len;
	uint64_t data_uptr;
	uint32_t fault_id, rsvd2;
};
struct fault_alloc_arg { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct viommu_alloc_arg {
	uint32_t size, flags, type, dev_id, hwpt_id, out_viommu_id, data_len, rsvd;
	uint64_t data_uptr;
};
struct vdevice_alloc_arg { uint32_t size, viommu_id, dev_id, out_vdevice_id; uint64_t virt_id; };
struct veventq_alloc_arg {
	uint32_t size, flags, viommu_id, type, depth, out_veventq_id, out_veventq_fd, rsvd;
};
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
		struct { uint32_t dev_id; } vevent;
		uint8_t raw[48];
	};
	uint32_t last;
	uint32_t pad;
};

static int fd, qfd, fault_mode;
static uint32_t idev, stdev, parent, grpid;
static size_t record; /* one record's size: a pgfault, or a vevent header and its data */

static int test_cmd(struct test_arg *cmd, uint32_t op, uint32_t id)
{
	cmd->size = 72;
	cmd->op = op;
	cmd->id = id;
	return ioctl(fd, CMD_TEST, cmd);
}

static void must(const char *what, int ret)
{
	if (ret) {
		perror(what);
		exit(1);
	}
}

/* one record queued: a page fault group of one fault, or a selftest vEVENT */
static int trigger(void)
{
	struct test_arg cmd = { 0 };

	if (!fault_mode) {
		cmd.vevent.dev_id = idev;
		return test_cmd(&cmd, OP_TRIGGER_VEVENT, 0);
	}
	cmd.iopf.dev_id = idev;
	cmd.iopf.pasid = 1;
	cmd.iopf.grpid = ++grpid;
	cmd.iopf.perm = 3;
	cmd.iopf.addr = 0xdeadbeaf;
	return test_cmd(&cmd, OP_TRIGGER_IOPF, 0);
}

/* read up to n records: the bytes read; a fault group's cookie is answered SUCCESS */
static long read_records(int n)
{
	unsigned char buf[4 * sizeof(struct pgfault)];
	long got = read(qfd, buf, n * record);

	for (long at = 0; fault_mode && at + (long)record <= got; at += record) {
		struct pgfault *f = (struct pgfault *)(buf + at);
		struct response r = { .cookie = f->cookie, .code = 0 };

		if (write(qfd, &r, sizeof(r)) != sizeof(r))
			perror("response");
	}
	return got;
}

static void show_poll(const char *step, int pfd)
{
	struct pollfd p = { .fd = pfd, .events = POLLIN | POLLRDNORM | POLLOUT };
	int n = poll(&p, 1, 0);

	printf("%s poll %d revents=%#x\n", step, n, n > 0 ? p.revents : 0);
}

static void show_all(const char *step, int ep)
{
	struct pollfd p = { .fd = qfd, .events = POLLIN | POLLRDNORM | POLLOUT };
	struct timespec zero = { 0, 0 };
	struct timeval tv = { 0, 0 };
	struct epoll_event ev = { 0 };
	fd_set r, w;
	int n;

	show_poll(step, qfd);
	n = ppoll(&p, 1, &zero, NULL);
	printf("%s ppoll %d revents=%#x\n", step, n, n > 0 ? p.revents : 0);
	n = epoll_wait(ep, &ev, 1, 0);
	printf("%s epoll %d events=%#x\n", step, n, n > 0 ? ev.events : 0);
	FD_ZERO(&r);
	FD_ZERO(&w);
	FD_SET(qfd, &r);
	FD_SET(qfd, &w);
	n = select(qfd + 1, &r, &w, NULL, &tv);
	printf("%s select %d r=%d w=%d\n", step, n, FD_ISSET(qfd, &r), FD_ISSET(qfd, &w));
	FD_ZERO(&r);
	FD_SET(qfd, &r);
	n = pselect(qfd + 1, &r, NULL, NULL, &zero, NULL);
	printf("%s pselect %d r=%d\n", step, n, FD_ISSET(qfd, &r));
}

static void *late_trigger(void *arg)
{
	(void)arg;
	usleep(50000); /* let the waiter block first (it waits however long this takes) */
	if (trigger())
		perror("trigger");
	return NULL;
}

static void setup_fault(void)
{
	struct fault_alloc_arg fa = { .size = sizeof(fa) };
	struct hwpt_alloc_arg ha = { .size = sizeof(ha) };
	struct test_arg rep = { 0 };
	uint32_t data = 0xbadbeef;

	must("fault_alloc", ioctl(fd, CMD_FAULT_QUEUE_ALLOC, &fa));
	ha.flags = 1u << 2; /* FAULT_ID_VALID */
	ha.dev_id = idev;
	ha.pt_id = parent;
	ha.data_type = 0xdead;
	ha.data_len = sizeof(data);
	ha.data_uptr = (uintptr_t)&data;
	ha.fault_id = fa.out_fault_id;
	must("nested_iopf", ioctl(fd, CMD_HWPT_ALLOC, &ha));
	rep.replace.pt_id = ha.out_hwpt_id;
	must("replace", test_cmd(&rep, OP_MOCK_DOMAIN_REPLACE, stdev));
	qfd = fa.out_fault_fd;
	record = sizeof(struct pgfault);
}

static void setup_veventq(void)
{
	struct viommu_alloc_arg va = { .size = sizeof(va), .type = 0xdeadbeef };
	struct vdevice_alloc_arg vd = { .size = sizeof(vd), .virt_id = 0x99 };
	struct veventq_alloc_arg vq = { .size = sizeof(vq), .type = 0xbeefbeef, .depth = 8 };
	struct hwpt_alloc_arg ha = { .size = sizeof(ha) };
	struct test_arg rep = { 0 };
	uint32_t data = 0xbadbeef;

	va.dev_id = idev;
	va.hwpt_id = parent;
	must("viommu_alloc", ioctl(fd, CMD_VIOMMU_ALLOC, &va));
	vd.viommu_id = va.out_viommu_id;
	vd.dev_id = idev;
	must("vdevice_alloc", ioctl(fd, CMD_VDEVICE_ALLOC, &vd));
	ha.dev_id = idev;
	ha.pt_id = va.out_viommu_id;
	ha.data_type = 0xdead;
	ha.data_len = sizeof(data);
	ha.data_uptr = (uintptr_t)&data;
	must("nested", ioctl(fd, CMD_HWPT_ALLOC, &ha));
	rep.replace.pt_id = ha.out_hwpt_id;
	must("replace", test_cmd(&rep, OP_MOCK_DOMAIN_REPLACE, stdev));
	vq.viommu_id = va.out_viommu_id;
	must("veventq_alloc", ioctl(fd, CMD_VEVENTQ_ALLOC, &vq));
	qfd = vq.out_veventq_fd;
	record = 8 + 4; /* struct iommufd_vevent_header, the selftest's virtual id */
}

int main(int argc, char **argv)
{
	struct ioas_alloc_arg ia = { .size = sizeof(ia) };
	struct hwpt_alloc_arg ha = { .size = sizeof(ha) };
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDNORM | EPOLLOUT };
	struct test_arg md = { 0 };
	struct pollfd p;
	pthread_t th;
	fd_set r;
	int ep, et, n, status, dupfd;
	pid_t child;

	setvbuf(stdout, NULL, _IOLBF, 0);
	fault_mode = argc > 1 && !strcmp(argv[1], "fault");
	fd = open("/dev/iommu", O_RDWR);
	must("open", fd < 0);
	must("ioas", ioctl(fd, CMD_IOAS_ALLOC, &ia));
	must("mock_domain", test_cmd(&md, OP_MOCK_DOMAIN, ia.out_ioas_id));
	idev = md.mock.out_idev_id;
	ha.flags = 1; /* NEST_PARENT */
	ha.dev_id = idev;
	ha.pt_id = ia.out_ioas_id;
	must("parent", ioctl(fd, CMD_HWPT_ALLOC, &ha));
	parent = ha.out_hwpt_id;
	stdev = md.mock.out_stdev_id;
	if (fault_mode)
		setup_fault();
	else
		setup_veventq();
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.fd = qfd;
	must("epoll_ctl", epoll_ctl(ep, EPOLL_CTL_ADD, qfd, &ev));

	show_all("empty", ep);
	printf("trigger %d\n", trigger());
	show_all("queued", ep);
	dupfd = dup(qfd);
	show_poll("dup", dupfd);
	close(dupfd);
	printf("read %ld\n", read_records(1));
	show_all("read", ep);

	/* two records, read one at a time: readable until the second is read */
	printf("trigger2 %d %d\n", trigger(), trigger());
	printf("read_one %ld\n", read_records(1));
	show_poll("one_left", qfd);
	printf("read_one %ld\n", read_records(1));
	show_poll("none_left", qfd);

	/* edge-triggered: one edge per record queued, even while the fd stays readable */
	et = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN | EPOLLET;
	must("epoll_et", epoll_ctl(et, EPOLL_CTL_ADD, qfd, &ev));
	printf("et_empty %d\n", epoll_wait(et, &ev, 1, 0));
	for (int i = 0; i < 2; i++) {
		n = trigger();
		printf("et_trigger %d", n);
		n = epoll_wait(et, &ev, 1, 0);
		printf(" %d", n);
		printf(" again %d\n", epoll_wait(et, &ev, 1, 0));
	}
	printf("et_read %ld", read_records(4));
	printf(" %d\n", epoll_wait(et, &ev, 1, 0));
	close(et);

	/* waits that end when another thread queues a record */
	pthread_create(&th, NULL, late_trigger, NULL);
	p.fd = qfd;
	p.events = POLLIN;
	n = poll(&p, 1, WAIT_MS);
	printf("wait_poll %d revents=%#x read %ld\n", n, n > 0 ? p.revents : 0,
	       read_records(4));
	pthread_join(th, NULL);

	ev.events = EPOLLIN;
	must("epoll_mod", epoll_ctl(ep, EPOLL_CTL_MOD, qfd, &ev));
	pthread_create(&th, NULL, late_trigger, NULL);
	memset(&ev, 0, sizeof(ev));
	n = epoll_wait(ep, &ev, 1, WAIT_MS);
	printf("wait_epoll %d events=%#x fd_ok=%d read %ld\n", n, n > 0 ? ev.events : 0,
	       ev.data.fd == qfd, read_records(4));
	pthread_join(th, NULL);

	/* and another process (a fork sharing the iommufd) */
	child = fork();
	if (!child) {
		usleep(50000);
		_exit(trigger() ? 1 : 0);
	}
	FD_ZERO(&r);
	FD_SET(qfd, &r);
	{
		struct timeval tv = { WAIT_MS / 1000, 0 };

		n = select(qfd + 1, &r, NULL, NULL, &tv);
	}
	printf("wait_select %d r=%d read %ld\n", n, FD_ISSET(qfd, &r), read_records(4));
	waitpid(child, &status, 0);
	printf("child %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	show_all("end", ep);

	if (fault_mode) {
		/* a fault never read, answered by the detach (iommufd_auto_response_faults):
		 * not readable any more once the replace returns */
		struct test_arg rep = { 0 };

		printf("trigger3 %d\n", trigger());
		show_poll("unread", qfd);
		rep.replace.pt_id = parent;
		printf("replace %d\n", test_cmd(&rep, OP_MOCK_DOMAIN_REPLACE, stdev));
		show_poll("detached", qfd);
	}
	close(ep);
	close(qfd);
	close(fd);
	return 0;
}
