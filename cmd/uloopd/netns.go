//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// reexecInNetns moves the calling thread into the named network namespace
// and re-executes uloopd there without --netns. A Go program cannot move
// all its threads into a namespace (threads the runtime already started
// stay where they are, and new ones may be cloned from either), but exec
// leaves one thread: the one that called it, already in the namespace.
// This is what `ip netns exec NAME uloopd` does, minus its /sys remount,
// which uloopd does not need (it talks netlink and reads /proc/sys, which
// follows the reader's namespace).
func reexecInNetns(name string) error {
	if strings.ContainsRune(name, '/') {
		return fmt.Errorf("bad --netns %q: want a name from /run/netns", name)
	}
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		return fmt.Errorf("opening network namespace: %w", err)
	}
	defer f.Close()
	runtime.LockOSThread()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is still in its original namespace, so it may be
		// unlocked.
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", name, err)
	}
	var args []string
	skip := false
	for _, a := range os.Args {
		switch {
		case skip:
			skip = false
		case a == "--netns" || a == "-netns":
			skip = true
		case strings.HasPrefix(a, "--netns=") || strings.HasPrefix(a, "-netns="):
		default:
			args = append(args, a)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// Never returns on success. On failure this thread stays locked: it is
	// in the other namespace and must not run other goroutines.
	return fmt.Errorf("re-executing in network namespace %s: %w", name, syscall.Exec(exe, args, os.Environ()))
}
