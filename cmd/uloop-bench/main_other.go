//go:build !linux

// uloop-bench runs only on Linux: it compares uloopd with the kernel's lo in
// Linux network namespaces. Elsewhere it builds to this stub, so that
// "go build ./..." works on any system and says why.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "uloop-bench: runs only on Linux (network namespaces, uloopd); this build is for %s\n", runtime.GOOS)
	os.Exit(1)
}
