//go:build !linux

// uloop runs only on Linux: `uloop run` gives a command a network namespace
// whose loopback is carried by a TUN device and a userspace stack, all of it
// Linux-only. Elsewhere it builds to this stub, so that "go build ./..."
// works on any system and says why.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "uloop: runs only on Linux (TUN device, netlink, network and user namespaces); this build is for %s\n", runtime.GOOS)
	os.Exit(1)
}
