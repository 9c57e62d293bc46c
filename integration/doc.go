//go:build linux

// Package integration holds uloop's root tests: each test makes its own
// network namespaces, drives real sockets and tools (ping, curl, iperf3,
// python3) through them, and checks what a user would see.
//
// Most behaviours must be the same on the kernel's lo and through uloopd, so
// those tests run twice, as subtests "kernel" (a fresh namespace with lo up and
// no daemon; this proves the test itself right) and "uloop" (a fresh namespace
// with uloopd running; these subtests also check that the traffic really
// crossed the TUN device and moved the daemon's metrics).
//
// Running:
//
//	go test -count=1 ./integration/                  # everything (root)
//	go test -count=1 -run '/kernel' ./integration/   # kernel mode only
//	go test -count=1 -run '/uloop' ./integration/    # uloop mode only
//
// The tests build ./cmd/uloopd into a temporary directory the first time a
// uloop-mode test needs it; set ULOOPD=/path/to/uloopd to use a prebuilt
// binary instead. Not root: every test skips.
package integration
