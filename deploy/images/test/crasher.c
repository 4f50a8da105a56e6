/* Test workload: a static C program that crashes in a function with a known name, so a
 * test can check gdb's backtrace on the captured core. Built by
 * deploy/images/test-images.sh into the image coredump-detector/test-crasher.
 *
 *   crasher segv        SIGSEGV at once (a write through NULL)
 *   crasher abort       SIGABRT at once
 *   crasher sleep       sleep forever (for `kubectl exec ... /crasher segv`)
 *   crasher wait FILE   wait until FILE exists, then SIGSEGV
 *   crasher sleep-segv SECONDS   SIGSEGV after SECONDS
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Marks the core: a test can look for it in the downloaded bytes. */
volatile char marker[] = "COREDUMP-DETECTOR-CRASHER-MARKER";

__attribute__((noinline)) void crash_here_in_known_function(int how) {
  if (how == SIGABRT) abort();
  fprintf(stderr, "crasher: crashing in crash_here_in_known_function\n");
  *(volatile int *)0 = 42;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "segv";
  if (strcmp(mode, "sleep") == 0) {
    for (;;) pause();
  } else if (strcmp(mode, "wait") == 0 && argc > 2) {
    while (access(argv[2], F_OK) != 0) usleep(100 * 1000);
  } else if (strcmp(mode, "sleep-segv") == 0 && argc > 2) {
    sleep((unsigned)atoi(argv[2]));
  }
  crash_here_in_known_function(strcmp(mode, "abort") == 0 ? SIGABRT : SIGSEGV);
  return 0;
}
