/* Walking the served trees as a VMM or a tool does: readlink of a device's iommu_group,
 * directory listings (readdir, raw getdents64), openat relative to a directory fd, the
 * vfio-dev attribute, /dev/vfio. Usage: sysfs_tree BDF. One line per check. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void out(const char *step, long ret)
{
	printf("%s %ld %d\n", step, ret < 0 ? -1L : ret, ret < 0 ? errno : 0);
}

static void list(const char *path)
{
	DIR *d = opendir(path);
	if (!d) {
		printf("ls %s: errno %d\n", path, errno);
		return;
	}
	printf("ls %s:", path);
	struct dirent *e;
	while ((e = readdir(d)))
		printf(" %s/%d", e->d_name, e->d_type);
	printf("\n");
	closedir(d);
}

static void link_of(const char *path)
{
	char buf[256];
	long n = readlink(path, buf, sizeof(buf) - 1);
	if (n < 0) {
		printf("readlink %s: errno %d\n", path, errno);
		return;
	}
	buf[n] = 0;
	printf("readlink %s: %s\n", path, buf);
}

int main(int argc, char **argv)
{
	char path[256], buf[256];
	if (argc != 2)
		return 2;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", argv[1]);
	link_of(path);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", argv[1]);
	link_of(path);
	char *group = realpath(path, buf);
	printf("realpath %s\n", group ? group : "(none)");
	struct stat st;
	out("lstat_link", lstat(path, &st));
	printf("link %d size %ld\n", S_ISLNK(st.st_mode), (long)st.st_size);
	out("stat_link", stat(path, &st));
	printf("dir %d\n", S_ISDIR(st.st_mode));
	out("open_nofollow", open(path, O_RDONLY | O_NOFOLLOW));
	out("readlink_file", readlink("/sys/kernel/iommu_groups/0/type", buf, sizeof(buf)));
	out("readlink_zero", readlink(path, buf, 0));

	list("/sys/kernel/iommu_groups");
	list("/sys/kernel/iommu_groups/0");
	list("/sys/kernel/iommu_groups/0/devices");
	list("/sys/module/vfio_iommu_type1/parameters");
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", argv[1]);
	list(path);
	list("/dev/vfio");
	list("/dev/vfio/devices");

	/* the cdev a VMM finds through vfio-dev */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev/vfio0/dev", argv[1]);
	int fd = open(path, O_RDONLY);
	long n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	printf("vfio-dev %s", buf);
	close(fd);

	/* a directory fd: openat relative to it, fstat, raw getdents64, its errors */
	int dfd = open("/sys/kernel/iommu_groups/0", O_RDONLY | O_DIRECTORY);
	out("open_dir", dfd < 0 ? -1 : 0);
	out("fstat_dir", fstat(dfd, &st));
	printf("dir %d\n", S_ISDIR(st.st_mode));
	fd = openat(dfd, "type", O_RDONLY);
	n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = 0;
	printf("openat type: %s", buf);
	close(fd);
	out("openat_missing", openat(dfd, "nope", O_RDONLY));
	out("getdents_small", syscall(SYS_getdents64, dfd, buf, 8));
	long total = 0, calls = 0;
	while ((n = syscall(SYS_getdents64, dfd, buf, 48)) > 0) { /* one record a call */
		total += n;
		calls++;
	}
	printf("getdents %ld bytes in %ld calls, last %ld\n", total, calls, n);
	lseek(dfd, 0, SEEK_SET);
	out("getdents_again", syscall(SYS_getdents64, dfd, buf, sizeof(buf)));
	out("read_dir", read(dfd, buf, 4));
	out("getdents_file", syscall(SYS_getdents64, fd = open("/sys/kernel/iommu_groups/0/type",
								  O_RDONLY), buf, sizeof(buf)));
	close(fd);
	close(dfd);
	out("open_dir_write", open("/sys/kernel/iommu_groups/0", O_RDWR));
	out("open_dir_plain", (fd = open("/dev/vfio", O_RDONLY)) < 0 ? -1 : 0);
	close(fd);
	return 0;
}
