/*
 * rusage-wrap: runs a core_pattern handler as its child and records what the
 * capture benchmark cannot see otherwise, because the kernel starts the
 * handler as a child of kthreadd: its peak RSS, how it ended, and when.
 *
 * usage: w OUTFILE PROGRAM [ARGS...]   (PROGRAM by absolute path)
 *
 * OUTFILE gets one line "MAXRSS STATUS END":
 *   MAXRSS  ru_maxrss from wait4 in KiB: the largest of the child and the
 *           descendants it waited for (a shell script's cat, gzip...);
 *   STATUS  the raw wait status of the child;
 *   END     CLOCK_MONOTONIC when the child was reaped, in nanoseconds.
 * It is written to OUTFILE.tmp and renamed, so a reader sees all or nothing.
 * Exits like the child (128 + signal when it was killed).
 *
 * The core pipe (stdin) stays with the child only: the kernel holds the
 * crashing process until every reader of the pipe has closed it, so the
 * wrapper must not keep its copy open. The pidfd of %F (fd 3) is inherited.
 * Every handler of the benchmark runs under this wrapper, so they all pay
 * the same (small) cost of one extra fork.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	pid_t pid = fork();
	if (pid < 0)
		return 3;
	if (pid == 0) {
		execv(argv[2], argv + 2);
		_exit(127);
	}
	/* Give up our end of the core pipe: 0 is the lowest free fd again. */
	close(0);
	open("/dev/null", O_RDONLY);

	int status;
	struct rusage ru;
	while (wait4(pid, &status, 0, &ru) < 0) {
		if (errno != EINTR)
			return 4;
	}
	struct timespec end;
	clock_gettime(CLOCK_MONOTONIC, &end);

	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]) >= (int)sizeof(tmp))
		return 5;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return 5;
	int bad = fprintf(f, "%ld %d %lld\n", (long)ru.ru_maxrss, status,
			  (long long)end.tv_sec * 1000000000LL + end.tv_nsec) < 0;
	if (fclose(f) != 0 || bad || rename(tmp, argv[1]) != 0)
		return 5;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
