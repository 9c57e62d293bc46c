//go:build !linux

// uloopd runs only on Linux: it takes over 127.0.0.0/8 with a TUN device,
// policy routing rules and per-device sysctls set through netlink and
// /proc/sys, inside Linux network namespaces. Elsewhere it builds to this
// stub, so that "go build ./..." works on any system and says why.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "uloopd: runs only on Linux (TUN device, netlink, network namespaces); this build is for %s\n", runtime.GOOS)
	os.Exit(1)
}
