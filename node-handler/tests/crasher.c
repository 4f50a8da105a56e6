/*
 * Test helper for tests/real_crash.rs: joins the given cgroups, sets
 * RLIMIT_CORE, fills memory deterministically and crashes in a function with
 * a known name.
 *
 * usage: crasher segv|abort MIB RLIMIT_CORE(unlimited|bytes) [cgroup.procs...]
 * env:   CRASHER_COMM sets comm (to test hostile names).
 *
 * ASLR is switched off (by re-executing once) so two runs map the same
 * addresses and their cores can be compared segment by segment.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MARKER "COREDUMP-DETECTOR-MARKER-0123456789"

static volatile unsigned char *buffer;

__attribute__((noinline)) void crash_here_in_known_function(int do_abort)
{
	if (do_abort)
		abort();
	*(volatile int *)0 = 42;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s segv|abort MIB RLIMIT [cgroup.procs...]\n", argv[0]);
		return 2;
	}
	int pers = personality(0xffffffff);
	if (pers != -1 && !(pers & ADDR_NO_RANDOMIZE)) {
		char self[4096];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n > 0 && personality(pers | ADDR_NO_RANDOMIZE) != -1) {
			self[n] = 0;
			/* By path, not /proc/self/exe, so comm stays "crasher". */
			execv(self, argv);
			perror("re-exec");
		}
	}
	for (int i = 4; i < argc; i++) {
		FILE *f = fopen(argv[i], "w");
		if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0) {
			perror(argv[i]);
			return 3;
		}
	}
	struct rlimit rl;
	if (strcmp(argv[3], "unlimited") == 0)
		rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
	else
		rl.rlim_cur = rl.rlim_max = strtoull(argv[3], NULL, 10);
	if (setrlimit(RLIMIT_CORE, &rl) != 0) {
		perror("setrlimit");
		return 4;
	}
	const char *comm = getenv("CRASHER_COMM");
	if (comm)
		prctl(PR_SET_NAME, comm, 0, 0, 0);

	size_t bytes = strtoull(argv[2], NULL, 10) << 20;
	if (bytes < 4096)
		bytes = 4096;
	buffer = malloc(bytes);
	if (!buffer)
		return 5;
	/* Half of each page zero, half pseudo-random: compressible like real
	 * memory, and every page touched. */
	uint32_t x = 12345;
	for (size_t i = 0; i < bytes; i++) {
		x = x * 1103515245u + 12345u;
		buffer[i] = (i % 4096 < 2048) ? 0 : (unsigned char)(x >> 16);
	}
	memcpy((void *)buffer, MARKER, sizeof(MARKER));
	if (getenv("CRASHER_TIMING")) {
		/* Lets the test time the dump alone, without the fill above. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		fprintf(stderr, "crashing at %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
	}
	crash_here_in_known_function(strcmp(argv[1], "abort") == 0);
	return 0;
}
