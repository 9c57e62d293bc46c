//go:build linux

// Package netns creates Linux network namespaces, runs code and commands in
// them, waits for what runs there to be ready, and stops it again. It is
// uloop's one implementation of these steps: the integration tests, the
// benchmark harness and `uloop run` use it.
//
// A Namespace is a handle to a network namespace, named (bind-mounted under
// /run/netns, as `ip netns add` makes them) or not. Code runs in one through
// Do, on an OS thread locked for the call; commands start in one through
// Start, which forks them from such a thread, so the command is in the
// namespace from its first instruction and its PID is the command's own. A
// Process is a started command: Stop ends its process group (SIGTERM, then
// SIGKILL after a grace period) and reaps it. Poll is the one polling loop
// with a deadline; Listening and Process.WaitListening are built on it.
//
// Everything here needs CAP_SYS_ADMIN (setns, mount) and is Linux-only.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as ip-netns(8)
// does: a name made here is seen by `ip netns`, and the other way round.
const Dir = "/run/netns"

// A Namespace is an open handle to a network namespace. The handle keeps the
// namespace alive until Close or Delete, whatever else happens to it. Its
// methods may be called from any goroutine.
type Namespace struct {
	name string // "" if the namespace has no name in Dir
	dev  uint64 // device and inode of the namespace: its identity
	ino  uint64

	mu sync.Mutex      // mu guards h
	h  vnetns.NsHandle // -1 once closed
}

var seq atomic.Uint64

// Create makes a new, empty network namespace (only lo, down) with a name no
// other Create makes: prefix-PID-N, N counting up in this process. The
// name ends up in Dir, like `ip netns add`. The caller deletes it with
// Delete.
func Create(prefix string) (*Namespace, error) {
	return CreateNamed(fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1)))
}

// CreateNamed makes a new, empty network namespace called name in Dir, as
// `ip netns add NAME` does; it fails if the name is taken. The caller's
// threads stay where they are.
func CreateNamed(name string) (*Namespace, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("netns: bad namespace name %q", name)
	}
	if err := prepareDir(); err != nil {
		return nil, fmt.Errorf("netns: preparing %s: %w", Dir, err)
	}
	path := filepath.Join(Dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("netns: creating namespace %s: %w", name, err)
	}
	f.Close()
	// A new namespace is made by moving a thread into it (unshare); the
	// thread's namespace file is then bind-mounted on path to keep it.
	err = onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting it on %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, fmt.Errorf("netns: creating namespace %s: %w", name, err)
	}
	n, err := Open(name)
	if err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, err
	}
	return n, nil
}

var dirMu sync.Mutex // dirMu guards dirShared
var dirShared bool

// prepareDir creates Dir and makes it a shared mount point, as ip-netns
// does, so that a namespace mounted there later is seen in other mount
// namespaces (those `ip netns exec` makes), and unmounting it here frees
// it there too.
func prepareDir() error {
	dirMu.Lock()
	defer dirMu.Unlock()
	if dirShared {
		return nil
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet: make it one
		if err = unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	dirShared = err == nil
	return err
}

// Open opens the named namespace in Dir.
func Open(name string) (*Namespace, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("netns: bad namespace name %q", name)
	}
	n, err := openPath(filepath.Join(Dir, name))
	if err != nil {
		return nil, fmt.Errorf("netns: opening namespace %s: %w", name, err)
	}
	n.name = name
	return n, nil
}

// Current opens the network namespace of the calling process (its main
// thread's, where every goroutine not inside Do runs). It has no name:
// Delete on it only closes it.
func Current() (*Namespace, error) {
	n, err := openPath("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("netns: opening the current namespace: %w", err)
	}
	return n, nil
}

func openPath(path string) (*Namespace, error) {
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return nil, err
	}
	return &Namespace{h: h, dev: st.Dev, ino: st.Ino}, nil
}

// Name is the namespace's name in Dir, "" if it has none.
func (n *Namespace) Name() string { return n.name }

// String is the name, or a description for a namespace without one.
func (n *Namespace) String() string {
	if n.name != "" {
		return n.name
	}
	return fmt.Sprintf("netns:[%d]", n.ino)
}

// Handle is the open handle (a file descriptor), for netlink.NewHandleAt and
// the like. It is valid until Close or Delete; the caller must not close it.
func (n *Namespace) Handle() vnetns.NsHandle {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.h
}

// Contains reports whether process pid is in this namespace now.
func (n *Namespace) Contains(pid int) bool {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return false
	}
	return st.Dev == n.dev && st.Ino == n.ino
}

// Close closes the handle; the namespace lives on as long as its name,
// a process or a socket holds it. Closing twice is harmless.
func (n *Namespace) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.h.IsOpen() {
		return nil
	}
	return n.h.Close()
}

// Delete closes the handle and removes the name from Dir, as `ip netns
// delete` does. The kernel frees the namespace once nothing else holds it:
// stop its processes first (Process.Stop, KillAll). Deleting a namespace
// whose name is already gone succeeds.
func (n *Namespace) Delete() error {
	err := n.Close()
	if n.name == "" {
		return err
	}
	path := filepath.Join(Dir, n.name)
	if uerr := unix.Unmount(path, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) && !errors.Is(uerr, unix.ENOENT) {
		return errors.Join(err, fmt.Errorf("netns: deleting namespace %s: %w", n.name, uerr))
	}
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return errors.Join(err, fmt.Errorf("netns: deleting namespace %s: %w", n.name, rerr))
	}
	return err
}

// Do runs fn on an OS thread that is in the namespace, and returns what fn
// returns. fn runs on a goroutine of its own, locked to its thread for the
// call; the caller's thread never changes namespace. Sockets fn opens stay
// in the namespace for their whole life, wherever they are used later;
// goroutines fn starts do not run in it, so open every socket in fn itself.
func (n *Namespace) Do(fn func() error) error {
	n.mu.Lock()
	h := n.h
	n.mu.Unlock()
	if !h.IsOpen() {
		return fmt.Errorf("netns: namespace %s is closed", n)
	}
	return onLockedThread(func() error {
		if err := vnetns.Set(h); err != nil {
			return fmt.Errorf("netns: entering namespace %s: %w", n, err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a new goroutine locked to its OS thread, which
// fn may move into another network namespace, and returns the thread to the
// process's namespace afterwards. If that fails the thread is never
// unlocked: the goroutine exits locked and the Go runtime ends the thread,
// so no other goroutine ever runs in the wrong namespace. (Ending a thread
// also sends the parent-death signal to children it forked, so this is only
// for that failure: a thread that is healthy is always unlocked.)
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread() // nothing changed yet
			errc <- fmt.Errorf("netns: reading the current namespace: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("netns: returning to the original namespace: %w", err))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
