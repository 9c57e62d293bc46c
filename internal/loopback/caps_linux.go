package loopback

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrCapsNeedNoCgo is returned when capabilities cannot be changed on every
// thread: syscall.AllThreadsSyscall refuses to run in a binary linked with
// cgo, whose threads the Go runtime does not all know about.
var ErrCapsNeedNoCgo = errors.New("capabilities are per thread and this binary uses cgo; build it with CGO_ENABLED=0 (as make build does)")

// DropCapabilities keeps CAP_NET_ADMIN and drops every other capability
// from the effective, permitted, inheritable, ambient and bounding sets of
// all threads. Once set up, uloopd needs CAP_NET_ADMIN only: to undo its
// routes and rules, bring lo down and write its device's sysctls (as uid 0,
// the owner of those /proc/sys files, it needs no CAP_DAC_OVERRIDE).
func DropCapabilities() error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	// The bounding set first: dropping from it takes CAP_SETPCAP, which
	// the capset below gives up.
	for c := 0; c <= last; c++ {
		if c == unix.CAP_NET_ADMIN {
			continue
		}
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); errno != 0 {
			if errno == unix.ENOTSUP {
				return ErrCapsNeedNoCgo
			}
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, errno)
		}
	}
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("clearing ambient capabilities: %w", errno)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	data[0].Effective = 1 << unix.CAP_NET_ADMIN
	data[0].Permitted = 1 << unix.CAP_NET_ADMIN
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		return fmt.Errorf("setting capabilities: %w", errno)
	}
	return nil
}

// lastCap is the highest capability number this kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("reading the last capability: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ClearInheritable empties the inheritable and ambient capability sets of
// all threads and leaves the effective and permitted sets as they are: the
// process keeps what it holds, and a program it executes gets capabilities
// from its user ID alone (all of them for root, none otherwise), never
// passed down. `uloop run` without root holds CAP_NET_ADMIN as an ambient
// capability, which would otherwise survive into the command it runs.
func ClearInheritable() error {
	if _, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); errno != 0 {
		if errno == unix.ENOTSUP {
			return ErrCapsNeedNoCgo
		}
		return fmt.Errorf("clearing ambient capabilities: %w", errno)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		return fmt.Errorf("clearing inheritable capabilities: %w", errno)
	}
	return nil
}
