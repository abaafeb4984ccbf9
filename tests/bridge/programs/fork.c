/* A forking program: the child inherits the echo fd, uses it, opens its own, exits;
 * the parent waits, then checks the inherited fd still works (its release must wait for
 * the last close in either process). Then a grandchild through a double fork. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define ECHO_NOP 0x3bf0
#define ECHO_PID 0x3bf4

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = open("/dev/iommulab-test", O_RDWR);
	if (fd < 0 || ioctl(fd, ECHO_PID, 0) != getpid()) { printf("FAIL parent open\n"); return 1; }
	pid_t c = fork();
	if (c == 0) {
		/* no trapped call before this one: the bridge meets the child here */
		if (ioctl(fd, ECHO_PID, 0) != getpid()) { printf("FAIL child pid\n"); _exit(1); }
		int own = open("/dev/iommulab-test", O_RDONLY);
		if (own < 0 || ioctl(own, ECHO_NOP, 0) != 0) { printf("FAIL child open\n"); _exit(1); }
		pid_t g = fork();
		if (g == 0) {
			_exit(ioctl(fd, ECHO_PID, 0) == getpid() ? 0 : 1);
		}
		int st;
		waitpid(g, &st, 0);
		printf("child %d grandchild %d status %d\n", getpid(), g, WEXITSTATUS(st));
		_exit(WEXITSTATUS(st));
	}
	int st;
	waitpid(c, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("FAIL child status %x\n", st); return 1; }
	if (ioctl(fd, ECHO_NOP, 0) != 0) { printf("FAIL parent after\n"); return 1; }
	printf("parent %d child %d ok\n", getpid(), c);
	return 0;
}
