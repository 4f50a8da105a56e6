/*
 * Test helper for tests/real_crash.rs: joins the given cgroups, sets
 * RLIMIT_CORE, fills memory deterministically and crashes in a function with
 * a known name.
 *
 * usage: crasher segv|abort MIB RLIMIT_CORE(unlimited|bytes) [cgroup.procs...]
 * env:   CRASHER_COMM sets comm (to test hostile names).
 *        CRASHER_FILL=mixed fills like a real heap (benchmarks): per 10 pages,
 *        5 zero, 2 random, 3 repetitive log text.
 *        CRASHER_WAIT=1: after the fill, print "ready" and wait for a signal
 *        (the benchmark times from its kill to the reaping).
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

/* Per 10 pages: 5 zero (written, so present), 2 pseudo-random, 3 log text. */
static void fill_mixed(unsigned char *b, size_t bytes)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;
	unsigned long line = 0;
	for (size_t page = 0; page * 4096 < bytes; page++) {
		unsigned char *p = b + page * 4096;
		size_t n = bytes - page * 4096 < 4096 ? bytes - page * 4096 : 4096;
		unsigned kind = page % 10;
		if (kind < 5) {
			memset(p, 0, n);
		} else if (kind < 7) {
			for (size_t i = 0; i + 8 <= n; i += 8) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				memcpy(p + i, &x, 8);
			}
		} else {
			size_t i = 0;
			while (i < n) {
				char l[128];
				int len = snprintf(l, sizeof(l),
					"2026-11-25T12:%02lu:%02lu.%03luZ INFO handler: request id=%08lu path=/api/v1/items status=200\n",
					(line / 60000) % 60, (line / 1000) % 60, line % 1000, line);
				line++;
				size_t k = (size_t)len < n - i ? (size_t)len : n - i;
				memcpy(p + i, l, k);
				i += k;
			}
		}
	}
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
	const char *fill = getenv("CRASHER_FILL");
	if (fill && strcmp(fill, "mixed") == 0) {
		fill_mixed((unsigned char *)buffer, bytes);
	} else {
		/* Half of each page zero, half pseudo-random: compressible like
		 * real memory, and every page touched. */
		uint32_t x = 12345;
		for (size_t i = 0; i < bytes; i++) {
			x = x * 1103515245u + 12345u;
			buffer[i] = (i % 4096 < 2048) ? 0 : (unsigned char)(x >> 16);
		}
	}
	memcpy((void *)buffer, MARKER, sizeof(MARKER));
	if (getenv("CRASHER_TIMING")) {
		/* Lets the test time the dump alone, without the fill above. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		fprintf(stderr, "crashing at %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
	}
	if (getenv("CRASHER_WAIT")) {
		printf("ready\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	crash_here_in_known_function(strcmp(argv[1], "abort") == 0);
	return 0;
}
