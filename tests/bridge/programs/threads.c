/* Threads share the fd table: each thread runs ioctls on a shared echo fd and opens
 * one of its own; the bridge must attribute every call to the process. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define ECHO_STRUCT 0x3bf1
#define ECHO_PID 0x3bf4
#define THREADS 4
#define CALLS 100
struct echo { uint32_t argsz, flags; uint64_t in, out; };
static int shared;

static void *worker(void *arg)
{
	uintptr_t id = (uintptr_t)arg, bad = 0;
	int own = open("/dev/iommulab-test", O_RDWR);
	if (own < 0) return (void *)1;
	for (int i = 0; i < CALLS; i++) {
		struct echo e = { sizeof e, 0, id * 1000 + i, 0 };
		if (ioctl(i & 1 ? own : shared, ECHO_STRUCT, &e) || e.out != e.in + 1) bad++;
		if (ioctl(shared, ECHO_PID, 0) != getpid()) bad++;
	}
	close(own);
	return (void *)bad;
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	shared = open("/dev/iommulab-test", O_RDWR);
	pthread_t t[THREADS];
	for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
	uintptr_t bad = 0;
	for (int i = 0; i < THREADS; i++) { void *r; pthread_join(t[i], &r); bad += (uintptr_t)r; }
	printf("threads done bad=%lu\n", (unsigned long)bad);
	return bad != 0;
}
