/* The pod sandbox ("pause") image's only program, for nodes without a registry: holds the
 * pod's namespaces, reaps orphans (it is PID 1 of pods that share their PID namespace) and
 * exits on SIGINT/SIGTERM, as the upstream pause container does. Built statically by
 * deploy/images/test-images.sh. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { _exit(sig == SIGTERM ? 0 : 2); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  if (getpid() != 1) {
    /* Still works, but the upstream image warns the same way. */
    write(2, "pause: not PID 1\n", 17);
  }
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
  return 0;
}
