#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef EXTRA
/* An unrelated function: the same bug in another build. */
__attribute__((noinline)) int unrelated_extra(int x) { printf("extra %d\n", x); return x * 3; }
#endif

volatile int *null_ptr;

__attribute__((noinline)) void parse_header(const char *s) {
    /* The bug: a null pointer written through. */
    *null_ptr = (int)strlen(s);
}

__attribute__((noinline)) void parse_body(const char *s) {
    int *p = (int *)(unsigned long)(strlen(s) > 100 ? 1 : 8);
    *p = 2;
}

__attribute__((noinline)) int recurse(int n) {
    volatile char buf[512];
    buf[0] = (char)n;
    return recurse(n + 1) + buf[0];
}

__attribute__((noinline)) void check_input(int n) {
    assert(n > 0 && "input must be positive");
    printf("%d\n", n);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "header";
#ifdef EXTRA
    if (argc > 5) unrelated_extra(argc);
#endif
    fprintf(stderr, "starting %s\n", mode);
    if (!strcmp(mode, "header")) parse_header("GET / HTTP/1.1");
    if (!strcmp(mode, "body")) parse_body("x");
    if (!strcmp(mode, "overflow")) return recurse(0);
    if (!strcmp(mode, "assert")) check_input(argc - 3);
    return 0;
}
