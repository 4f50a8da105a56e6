package main

import (
	"fmt"
	"os"
)

type header struct{ n int }

//go:noinline
func crashHere(h *header) int {
	return h.n + 1
}

func main() {
	var h *header
	if len(os.Args) > 5 {
		h = &header{}
	}
	fmt.Println(crashHere(h))
}
