/* Tries every way it knows to open the "real device" at argv[1] (a char device standing in
 * for /dev/iommu; argv[2] a scratch directory; argv[3] --no-rename to leave a real device
 * where it is). Each attempt must fail; ordinary files must keep working.
 * Prints "ok NAME" / "FAIL NAME". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

static int fails;
#define DENIED(name, call) do { errno = 0; int r_ = (call); \
	if (r_ < 0) printf("ok %s (errno %d)\n", name, errno); \
	else { printf("FAIL %s reached it (fd %d)\n", name, r_); fails++; } } while (0)
#define WORKS(name, cond) do { if (cond) printf("ok %s\n", name); \
	else { printf("FAIL %s (errno %d)\n", name, errno); fails++; } } while (0)

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 3) return 2;
	const char *dev = argv[1], *scratch = argv[2];
	char buf[4096], dir[4096];
	strcpy(dir, dev);
	dirname(dir);
	struct stat st;
	WORKS("stat-allowed", stat(dev, &st) == 0 && S_ISCHR(st.st_mode));
	DENIED("open", open(dev, O_RDWR));
	DENIED("open-rdonly", open(dev, O_RDONLY));
	snprintf(buf, sizeof buf, "%s/link", scratch);
	symlink(dev, buf);
	DENIED("symlink", open(buf, O_RDWR));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	DENIED("openat-dirfd", openat(dfd, basename((char *)dev), O_RDWR));
	snprintf(buf, sizeof buf, "/proc/self/fd/%d/%s", dfd, basename((char *)dev));
	DENIED("proc-fd-dir", open(buf, O_RDWR));
	snprintf(buf, sizeof buf, "/proc/1/root%s", dev);
	DENIED("proc-1-root", open(buf, O_RDWR));
	snprintf(buf, sizeof buf, "/proc/%d/cwd/../../../../../../../../..%s", getpid(), dev);
	DENIED("dotdot", open(buf, O_RDWR));
	struct open_how how = { .flags = O_RDWR };
	DENIED("openat2", syscall(SYS_openat2, AT_FDCWD, dev, &how, sizeof how));
	struct { struct file_handle fh; char space[128]; } h = { .fh.handle_bytes = 128 };
	int mount_id;
	if (name_to_handle_at(AT_FDCWD, dev, &h.fh, &mount_id, 0) == 0)
		DENIED("open_by_handle_at", open_by_handle_at(dfd, &h.fh, O_RDWR));
	else
		printf("ok name_to_handle_at refused (errno %d)\n", errno);
	snprintf(buf, sizeof buf, "%s/hardlink", scratch);
	DENIED("link", link(dev, buf));
	DENIED("link-open", open(buf, O_RDWR));
	snprintf(buf, sizeof buf, "%s/node", scratch);
	DENIED("mknod", mknod(buf, S_IFCHR | 0600, st.st_rdev));
	DENIED("mknod-open", open(buf, O_RDWR));
	if (argc < 4 || strcmp(argv[3], "--no-rename")) { /* a real device is not risked */
		snprintf(buf, sizeof buf, "%s/moved", scratch);
		DENIED("rename", rename(dev, buf));
		DENIED("rename-open", open(buf, O_RDWR));
	}
	/* the supervisor's own view of us: ptrace-family access to outside processes */
	DENIED("proc-ppid-mem", open("/proc/1/mem", O_RDWR));
	/* ordinary files keep working */
	snprintf(buf, sizeof buf, "%s/file", scratch);
	int f = open(buf, O_CREAT | O_RDWR, 0600);
	WORKS("create", f >= 0 && write(f, "x", 1) == 1);
	char buf2[4096];
	snprintf(buf2, sizeof buf2, "%s/sub", scratch);
	mkdir(buf2, 0700);
	strcat(buf2, "/file2");
	WORKS("rename-across", rename(buf, buf2) == 0);
	WORKS("read-etc", open("/etc/passwd", O_RDONLY) >= 0);
	printf("done %d\n", fails);
	return fails != 0;
}
