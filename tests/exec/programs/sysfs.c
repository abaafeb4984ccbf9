/* The sysfs files a VMM reads, under exec. Usage: sysfs GROUP. Prints each file's text,
 * then one line per check: "<step> <ret> <errno> [values]". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

static void out(const char *step, long ret)
{
	printf("%s %ld %d\n", step, ret < 0 ? -1L : ret, ret < 0 ? errno : 0);
}

static void cat(const char *path)
{
	char buf[4096];
	int fd = open(path, O_RDONLY);
	long n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (n < 0) {
		printf("%s: errno %d\n", path, errno);
	} else {
		buf[n] = 0;
		printf("%s: %s", path, buf);
	}
	if (fd >= 0)
		close(fd);
}

int main(int argc, char **argv)
{
	char path[128], buf[64];
	if (argc != 2)
		return 2;
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/type", argv[1]);
	cat(path);
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/reserved_regions", argv[1]);
	cat(path);
	cat("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit");
	cat("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts");
	cat("/sys/module/vfio_iommu_type1/parameters/disable_hugepages");

	/* small reads move the position; pread at an offset */
	int fd = open("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", O_RDONLY);
	long a = read(fd, buf, 2), b = read(fd, buf + 2, 10);
	printf("pieces %ld %ld %.*s", a, b, (int)(a + b), buf);
	out("read_at_end", read(fd, buf, 10));
	out("pread_2", pread(fd, buf, 10, 2));
	struct stat st;
	out("fstat", fstat(fd, &st));
	printf("mode %o size %ld\n", st.st_mode, (long)st.st_size);
	out("write_rdonly", write(fd, "1\n", 2));
	out("mmap", (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0) == -1 ? -1 : 0);
	int null = open("/dev/null", O_WRONLY);
	out("sendfile", sendfile(null, fd, NULL, 10));
	out("copy_file_range", copy_file_range(fd, NULL, null, NULL, 10, 0));
	close(fd);

	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/reserved_regions", argv[1]);
	out("stat_regions", stat(path, &st));
	printf("mode %o size %ld\n", st.st_mode, (long)st.st_size);
	out("open_wronly", open(path, O_WRONLY));
	out("open_directory", open(path, O_RDONLY | O_DIRECTORY));
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s", argv[1]);
	out("stat_group_dir", stat(path, &st));
	printf("dir %d\n", S_ISDIR(st.st_mode));
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/devices_nope", argv[1]);
	out("open_missing", open(path, O_RDONLY));
	out("open_group_99", open("/sys/kernel/iommu_groups/99/type", O_RDONLY));
	out("open_param_missing", open("/sys/module/vfio_iommu_type1/parameters/nope", O_RDONLY));
	out("access_type", access("/sys/module/vfio_iommu_type1/parameters/disable_hugepages",
				  R_OK));

	/* writes: the parameters are root's (param_set_uint, param_set_bool); type is not */
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/type", argv[1]);
	out("open_type_wronly", open(path, O_WRONLY));
	fd = open("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", O_WRONLY);
	out("open_param_wronly", fd < 0 ? -1 : 0);
	out("write_hex", write(fd, "0x20\n", 5));
	out("write_bad", write(fd, "12a", 3));
	out("write_range", write(fd, "4294967296", 10));
	close(fd);
	cat("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit");
	fd = open("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", O_RDWR);
	out("write_on", write(fd, "on", 2));
	out("write_x", write(fd, "x", 1));
	close(fd);
	cat("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts");
	return 0;
}
