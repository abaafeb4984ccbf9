/* Killed mid-call: the parent holds two opens (one also mmapped), forks a child that keeps
 * the shared fd and waits; then the parent asks the handler to SIGKILL it during an ioctl. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/types.h>

#define ECHO_NOP 0x3bf0
#define ECHO_KILL 0x3bf3

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int a = open("/dev/iommulab-test", O_RDWR);
	int b = open("/dev/iommulab-test", O_RDWR);
	void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, b, 0);
	close(b); /* the mapping keeps b's file alive */
	if (m == MAP_FAILED) return 2;
	int ready[2];
	if (pipe(ready)) return 2;
	if (fork() == 0) {
		ioctl(a, ECHO_NOP, 0); /* meet the bridge before the parent dies */
		write(ready[1], "r", 1);
		for (;;) pause();
	}
	char r;
	if (read(ready[0], &r, 1) != 1) return 2;
	for (int i = 0; i < 100; i++) ioctl(a, ECHO_NOP, 0);
	printf("about to be killed\n");
	ioctl(a, ECHO_KILL, 0);
	printf("FAIL still alive\n");
	return 1;
}
