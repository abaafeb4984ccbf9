/* The fault-injection files under iommulab exec: /proc/.../fail-nth read and write as
 * fs/proc/base.c's proc_fail_nth_read/write, per thread; the debugfs stand-ins; and the
 * points an IOAS_MAP (pinning, a mock domain attached) takes of memory the program has
 * touched or not, private or shared. One line per step: "<step> <ret> <errno> <data>". */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define T ';'
#define CMD_IOAS_ALLOC _IO(T, 0x81)
#define CMD_IOAS_MAP _IO(T, 0x85)
#define CMD_IOAS_UNMAP _IO(T, 0x86)
#define CMD_TEST _IO(T, 0x80 + 32)
#define OP_MOCK_DOMAIN 2

struct ioas_alloc_arg { uint32_t size, flags, out_ioas_id; };
struct map_arg { uint32_t size, flags, ioas_id, rsvd; uint64_t user_va, length, iova; };
struct unmap_arg { uint32_t size, ioas_id; uint64_t iova, length; };
struct test_arg {
	uint32_t size, op, id, rsvd;
	union {
		struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock;
		uint8_t raw[48];
	};
	uint32_t last, pad;
};

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static void show_read(const char *step, int fd, size_t n, off_t pos)
{
	char buf[64] = { 0 };
	ssize_t r = pread(fd, buf, n, pos);
	for (char *c = buf; *c; c++)
		if (*c == '\n')
			*c = '|';
	printf("%s %zd %d %s\n", step, r, r < 0 ? errno : 0, buf);
}

static void show_write(const char *step, int fd, const char *s, size_t n)
{
	ssize_t r = pwrite(fd, s, n, 0);
	printf("%s %zd %d\n", step, r, r < 0 ? errno : 0);
}

static int iommufd, ioas, nth_fd;

/* the points an IOAS_MAP of va takes: armed far off, what is left read back */
static void map_points(const char *step, void *va, size_t len)
{
	struct map_arg m = { .size = sizeof(m), .flags = 6, .ioas_id = ioas,
			     .user_va = (uintptr_t)va, .length = len };
	char buf[32] = { 0 };
	pwrite(nth_fd, "1000", 4, 0);
	int rc = ioctl(iommufd, CMD_IOAS_MAP, &m);
	int err = rc < 0 ? errno : 0;
	pread(nth_fd, buf, sizeof(buf), 0);
	pwrite(nth_fd, "0", 1, 0);
	printf("%s %d %d %ld\n", step, rc, err, 1000 - atol(buf));
	struct unmap_arg u = { .size = sizeof(u), .ioas_id = ioas, .iova = m.iova, .length = len };
	ioctl(iommufd, CMD_IOAS_UNMAP, &u);
}

/* a thread's calls into the model take its own counter's points, not the main one's */
static void *alloc_thread(void *arg)
{
	char path[96], buf[32] = { 0 };
	struct ioas_alloc_arg a = { .size = sizeof(a) };
	(void)arg;
	snprintf(path, sizeof(path), "/proc/thread-self/fail-nth");
	int fd = open(path, O_RDWR);
	pwrite(fd, "1000", 4, 0);
	int rc = ioctl(iommufd, CMD_IOAS_ALLOC, &a);
	pread(fd, buf, sizeof(buf), 0);
	pwrite(fd, "0", 1, 0);
	printf("thread_alloc_points %d %d %ld\n", rc, rc < 0 ? errno : 0, 1000 - atol(buf));
	close(fd);
	return NULL;
}

static void *thread_main(void *arg)
{
	char path[96];
	(void)arg;
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid_());
	int fd = open(path, O_RDWR);
	show_read("thread_own", fd, 32, 0);  /* 0: a new task's counter */
	show_write("thread_set", fd, "9", 1);
	close(fd);
	return NULL;
}

int main(void)
{
	char path[96];
	const size_t len = 16 * 4096;

	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid_());
	int fd = open(path, O_RDWR);
	printf("open %d %d\n", fd < 0 ? -1 : 0, fd < 0 ? errno : 0);
	show_read("initial", fd, 32, 0);
	show_write("set_dec", fd, "12\n", 3);
	show_read("read_dec", fd, 32, 0);
	show_read("read_at_1", fd, 32, 1);
	show_read("read_at_3", fd, 32, 3);
	show_read("read_short", fd, 1, 0);
	show_write("set_hex", fd, "0x1f", 4);
	show_read("read_hex", fd, 32, 0);
	show_write("set_oct", fd, "017", 3);
	show_read("read_oct", fd, 32, 0);
	show_write("set_plus", fd, "+5", 2);
	show_read("read_plus", fd, 32, 0);
	show_write("bad_neg", fd, "-1", 2);
	show_write("bad_text", fd, "1x", 2);
	show_write("bad_two_newlines", fd, "1\n\n", 3);
	show_write("bad_empty", fd, "", 0);
	show_write("bad_range", fd, "4294967296", 10);
	show_write("max", fd, "4294967295", 10);
	show_read("read_max", fd, 32, 0);
	/* kstrtouint_from_user reads 34 bytes at most: a longer write parses those */
	show_write("long_ok", fd, "0000000000000000000000000000000007xxxxxxxx", 42);
	show_read("read_long", fd, 32, 0);
	ssize_t r = syscall(SYS_pwrite64, fd, (void *)8, 4, 0);
	printf("bad_addr %zd %d\n", r, r < 0 ? errno : 0);
	r = syscall(SYS_pread64, fd, (void *)8, 4, 0);
	printf("bad_read_addr %zd %d\n", r, r < 0 ? errno : 0);
	show_read("neg_pos", fd, 4, -1);
	show_write("disarm", fd, "0", 1);

	/* /proc/PID/fail-nth is the leader's counter too; read through a second file */
	snprintf(path, sizeof(path), "/proc/%d/fail-nth", getpid());
	int lead = open(path, O_RDONLY);
	show_write("leader_set", fd, "3", 1);
	show_read("leader_read", lead, 32, 0);
	r = write(lead, "1", 1);
	printf("leader_write_rdonly %zd %d\n", r, r < 0 ? errno : 0);
	close(lead);
	show_write("disarm", fd, "0", 1);

	/* another thread: a counter of its own, which leaves the main thread's alone */
	pthread_t th;
	pthread_create(&th, NULL, thread_main, NULL);
	pthread_join(th, NULL);
	show_read("after_thread", fd, 32, 0);

	/* a forked child starts at 0 */
	show_write("parent_set", fd, "4", 1);
	fflush(stdout);
	pid_t child = fork();
	if (!child) {
		snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid_());
		int cfd = open(path, O_RDWR);
		show_read("child_own", cfd, 32, 0);
		fflush(stdout);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	show_read("parent_kept", fd, 32, 0);
	show_write("disarm", fd, "0", 1);
	/* a parent may arm its child's counter, opened before the child did anything */
	int go[2], back[2];
	char c;
	if (pipe(go) || pipe(back))
		return 1;
	fflush(stdout);
	child = fork();
	if (!child) {
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid_());
		int cfd = open(path, O_RDONLY);
		if (write(back[1], "x", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(1);
		show_read("child_armed_by_parent", cfd, 32, 0);
		fflush(stdout);
		_exit(0);
	}
	snprintf(path, sizeof(path), "/proc/%d/task/%d/fail-nth", child, child);
	int cfd = open(path, O_WRONLY);
	printf("open_child %d %d\n", cfd < 0 ? -1 : 0, cfd < 0 ? errno : 0);
	if (write(go[1], "x", 1) != 1 || read(back[0], &c, 1) != 1)
		return 1;
	show_write("arm_child", cfd, "6", 1);
	fflush(stdout);
	close(cfd);
	if (write(go[1], "x", 1) != 1)
		return 1;
	waitpid(child, NULL, 0);
	show_write("disarm", fd, "0", 1);

	/* the debugfs stand-ins */
	DIR *d = opendir("/sys/kernel/debug/");
	printf("opendir %d %d\n", d ? 0 : -1, d ? 0 : errno);
	if (d) {
		struct dirent *e;
		printf("entries");
		while ((e = readdir(d)))
			if (!strncmp(e->d_name, "fail", 4))
				printf(" %s", e->d_name);
		printf("\n");
		int k = openat(dirfd(d), "failslab/ignore-gfp-wait", O_RDWR);
		show_read("ignore_gfp_wait", k, 8, 0);
		show_write("set_ignore_gfp_wait", k, "N", 1);
		show_read("ignore_gfp_wait_now", k, 8, 0);
		show_write("bad_bool", k, "x", 1);
		close(k);
		k = openat(dirfd(d), "failslab/verbose", O_RDWR);
		show_read("verbose", k, 8, 0);
		show_write("set_verbose", k, "0", 1);
		show_read("verbose_now", k, 8, 0);
		close(k);
		k = openat(dirfd(d), "failslab/times", O_RDWR);
		show_write("set_times", k, "-1", 2);
		show_read("times_now", k, 8, 0);
		close(k);
		k = openat(dirfd(d), "failslab/nonesuch", O_RDWR);
		printf("nonesuch %d %d\n", k < 0 ? -1 : 0, k < 0 ? errno : 0);
		closedir(d);
	}
	/* a served directory: no write open, no read; a knob is no directory */
	int dfd = open("/sys/kernel/debug", O_RDWR | O_DIRECTORY);
	printf("dir_rdwr %d %d\n", dfd < 0 ? -1 : 0, dfd < 0 ? errno : 0);
	dfd = open("/sys/kernel/debug/failslab", O_RDONLY | O_DIRECTORY);
	char small[64];
	r = read(dfd, small, sizeof(small));
	printf("dir_read %zd %d\n", r, r < 0 ? errno : 0);
	r = syscall(SYS_getdents64, dfd, small, 8);
	printf("getdents_small %zd %d\n", r, r < 0 ? errno : 0);
	r = syscall(SYS_getdents64, dfd, small, sizeof(small));
	printf("getdents_first %zd %d %s\n", r, r < 0 ? errno : 0, small + 19);
	close(dfd);
	dfd = open("/sys/kernel/debug/failslab/verbose", O_RDONLY | O_DIRECTORY);
	printf("knob_as_dir %d %d\n", dfd < 0 ? -1 : 0, dfd < 0 ? errno : 0);
	r = ioctl(fd, 0x3b00);
	printf("ioctl_fail_nth %zd %d\n", r, r < 0 ? errno : 0);

	/* IOAS_MAP's points: memory the program touched is adopted, not faulted */
	iommufd = open("/dev/iommu", O_RDWR);
	struct ioas_alloc_arg a = { .size = sizeof(a) };
	ioctl(iommufd, CMD_IOAS_ALLOC, &a);
	ioas = a.out_ioas_id;
	struct test_arg t = { .size = sizeof(t), .op = OP_MOCK_DOMAIN, .id = ioas };
	ioctl(iommufd, CMD_TEST, &t);
	nth_fd = fd;
	void *cold = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *warm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	madvise(cold, len, MADV_NOHUGEPAGE);
	madvise(warm, len, MADV_NOHUGEPAGE);
	memset(warm, 0x5a, len);
	memset(shm, 0xa5, len);
	map_points("map_untouched", cold, len);
	map_points("map_touched", warm, len);
	map_points("map_shared_touched", shm, len);
	pwrite(fd, "1000", 4, 0);
	pthread_t at;
	pthread_create(&at, NULL, alloc_thread, NULL);
	pthread_join(at, NULL);
	char mine[32] = { 0 };
	pread(fd, mine, sizeof(mine), 0);
	pwrite(fd, "0", 1, 0);
	printf("main_alloc_points 0 0 %ld\n", 1000 - atol(mine));
	/* after a fork the pages the parent touched are shared: the child's pin copies them */
	fflush(stdout);
	child = fork();
	if (!child) {
		snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid_());
		nth_fd = open(path, O_RDWR);
		map_points("map_after_fork", warm, len);
		fflush(stdout);
		_exit(0);
	}
	waitpid(child, NULL, 0);
	/* the release of a close counts against the closing thread */
	struct map_arg m = { .size = sizeof(m), .flags = 6, .ioas_id = ioas,
			     .user_va = (uintptr_t)warm, .length = len };
	ioctl(iommufd, CMD_IOAS_MAP, &m);
	char buf[32] = { 0 };
	pwrite(fd, "1000", 4, 0);
	close(iommufd);
	pread(fd, buf, sizeof(buf), 0);
	pwrite(fd, "0", 1, 0);
	printf("close_points 0 0 %ld\n", 1000 - atol(buf));
	return 0;
}
