/* Signals during a slow answer: a 1 ms interval timer (handler without SA_RESTART) fires
 * while the handler takes its time over ECHO_SLOW. A signal that comes before the
 * supervisor has received the call may end it with EINTR (the kernel's rule: the call
 * never reached the handler), and the program then issues it again; once received, the
 * call completes once with the handler's value (WAIT_KILLABLE_RECV), which the test
 * checks by counting the handler's calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <unistd.h>

#define ECHO_SLOW 0x3bf5
static volatile sig_atomic_t ticks;
static void tick(int sig) { (void)sig; ticks++; }

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = open("/dev/iommulab-test", O_RDWR);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = tick; /* no SA_RESTART */
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	int fails = 0;
	for (int i = 0; i < 3; i++) {
		long r;
		do
			r = ioctl(fd, ECHO_SLOW, 0);
		while (r == -1 && errno == EINTR);
		if (r != 77) { printf("FAIL slow %d -> %ld errno %d\n", i, r, errno); fails++; }
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	printf("ticks %d\ndone %d\n", (int)ticks, fails);
	return fails != 0;
}
