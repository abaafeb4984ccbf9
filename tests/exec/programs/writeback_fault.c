/* Write-backs that fault: the struct of IOMMU_IOAS_ALLOC in a read-only page (the
 * kernel allocates the IOAS, cannot copy its id out, destroys it and answers EFAULT),
 * and IOMMU_IOAS_IOVA_RANGES whose array pointer faults after its count was checked. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define T ';'

static int count_fds(void)
{
	int n = 0;
	for (int i = 0; i < 1024; i++)
		n += fcntl(i, F_GETFD) >= 0;
	return n;
}

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	uint32_t *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	ro[0] = 12;  /* size */
	mprotect(ro, 4096, PROT_READ);
	int rc = ioctl(fd, _IO(T, 0x81), ro);
	printf("alloc_readonly %d %d %u\n", rc, rc < 0 ? errno : 0, ro[2]);
	uint32_t ok[3] = { 12, 0, 0 };
	rc = ioctl(fd, _IO(T, 0x81), ok);
	printf("alloc %d %d %u\n", rc, rc < 0 ? errno : 0, ok[2]);
	/* the struct straddles into a read-only page: size readable, out_ioas_id not
	 * writable (the write-back of the 12 bytes faults) */
	uint8_t *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	uint32_t *edge = (uint32_t *)(two + 4096 - 8);
	edge[0] = 12;
	edge[1] = 0;
	mprotect(two + 4096, 4096, PROT_READ);
	rc = ioctl(fd, _IO(T, 0x81), edge);
	printf("alloc_straddle %d %d %u\n", rc, rc < 0 ? errno : 0, edge[0]);
	rc = ioctl(fd, _IO(T, 0x81), ok);
	printf("alloc_again %d %d %u\n", rc, rc < 0 ? errno : 0, ok[2]);

	/* the selftest's MOCK_DOMAIN and CREATE_ACCESS in a read-only struct: both undone */
	uint32_t *rt = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	rt[0] = 72;  /* size */
	rt[1] = 2;  /* MOCK_DOMAIN */
	rt[2] = ok[2];  /* the IOAS */
	mprotect(rt, 4096, PROT_READ);
	rc = ioctl(fd, _IO(T, 0xa0), rt);
	printf("mock_domain_readonly %d %d\n", rc, rc < 0 ? errno : 0);
	mprotect(rt, 4096, PROT_READ | PROT_WRITE);
	rt[1] = 5;  /* CREATE_ACCESS */
	mprotect(rt, 4096, PROT_READ);
	int before = count_fds();
	rc = ioctl(fd, _IO(T, 0xa0), rt);
	printf("create_access_readonly %d %d\n", rc, rc < 0 ? errno : 0);
	uint32_t t[18] = { 72, 2, ok[2] };
	rc = ioctl(fd, _IO(T, 0xa0), t);
	printf("mock_domain %d %d %u %u %u\n", rc, rc < 0 ? errno : 0, t[4], t[5], t[6]);
	printf("fds_added %d\n", count_fds() - before);
	close(fd);
	return 0;
}
