// Test workload: a Go program that dereferences nil in a function with a known name.
// GOTRACEBACK=crash (the image's environment) makes the runtime end the process with
// SIGABRT and a core dump instead of exit status 2. Built by
// deploy/images/test-images.sh into the image coredump-detector/test-crasher-go.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
)

type node struct{ next *node }

//go:noinline
func crashHereInGo(n *node) int {
	fmt.Fprintln(os.Stderr, "crasher-go: dereferencing nil in main.crashHereInGo")
	return len(fmt.Sprint(n.next.next))
}

func main() {
	debug.SetTraceback("crash")
	os.Exit(crashHereInGo(&node{}))
}
