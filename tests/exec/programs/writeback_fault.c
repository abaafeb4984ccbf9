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
	close(fd);
	return 0;
}
