//go:build linux

package main

// `uloop run` is four processes:
//
//	uloop run (outer)   the user's process: checks what rootless needs,
//	  |                 forwards signals, passes the exit status on
//	  +- uloop run-inner   in a new network namespace (and, without root,
//	       |               a new user namespace); holds the TUN device and
//	       |               the stack, serves the status socket
//	       +- uloop run-watchdog   probes the data path every second and,
//	       |                       if it stops answering, hands 127/8 back
//	       |                       to lo (a process of its own, so that it
//	       |                       goes on when run-inner is stopped)
//	       +- CMD          started once the loopback answers, in a process
//	                       group of its own, in the terminal's foreground
//
// The namespaces are anonymous: nothing names or mounts them, so the kernel
// frees the namespace, and with it the TUN device and its routes, when the
// last process in it ends, however it ends. The inner process dies with the
// outer one (its parent-death signal, SIGTERM, makes it kill everything in
// its namespace and exit), and CMD with the inner one (parent-death signal
// SIGKILL). Why not `unshare` in-process: a Go program is multi-threaded and
// cannot move all its threads into new namespaces; a child cloned into them
// can.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/uloop/uloop/internal/loopback"
	"golang.org/x/sys/unix"
)

// runOptions are `uloop run`'s flags; the inner process parses the same.
type runOptions struct {
	loopback.Options
	root     bool
	logLevel string
	watchdog time.Duration
}

func runFlags(name string, o *runOptions) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	o.AddFlags(fs, "uloop")
	fs.BoolVar(&o.root, "root", false, "without root: map your user to root inside the new user namespace, as unshare -r does (CMD then runs as root there, with its capabilities over the namespace)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "uloop's own log on stderr: debug, info, warn or error")
	fs.DurationVar(&o.watchdog, "watchdog", 3*time.Second, "if the data path answers no probe for this long (uloop stopped or wedged), hand 127.0.0.0/8 back to the kernel's lo for the rest of the run; 0: never")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uloop run [flags] [--] CMD [ARGS...]\n\n"+
			"Runs CMD in a new network namespace whose 127.0.0.0/8 is carried by uloop\n"+
			"(lo stays up for ::1), and exits with CMD's status (128+N if signal N ended it;\n"+
			"125 if uloop failed, 126 if CMD could not run, 127 if it was not found).\n\nflags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// parseRun parses `uloop run`'s arguments into options and CMD.
func parseRun(name string, args []string) (runOptions, []string, error) {
	var o runOptions
	fs := runFlags(name, &o)
	if err := fs.Parse(args); err != nil {
		return o, nil, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return o, nil, errors.New("no command given")
	}
	if _, err := o.Route(); err != nil {
		return o, nil, err
	}
	return o, fs.Args(), nil
}

func runMain(args []string) int {
	o, _, err := parseRun("uloop run", args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	rootless := os.Geteuid() != 0
	if rootless {
		if problems := rootlessProblems("/", "/dev/net/tun"); len(problems) > 0 {
			reportProblems(problems)
			return exitFailed
		}
	} else if o.root {
		fmt.Fprintln(os.Stderr, "uloop run: --root maps an ordinary user to root; you are root already, so it changes nothing")
	}
	sock, err := sessionSocket(os.Getpid())
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}

	// Signals are caught before the inner process exists, so that none is
	// lost in between; each is passed on to the inner process, which passes
	// it to CMD's process group.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwarded...)

	// Is this process in the terminal's foreground? Then CMD goes there.
	fgPgrp, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	foreground := err == nil && fgPgrp == unix.Getpgrp()

	inner := exec.Command("/proc/self/exe", append([]string{innerCommand, "--socket", sock, "--foreground=" + strconv.FormatBool(foreground), "--"}, args...)...)
	inner.Args[0] = os.Args[0]
	inner.Stdin, inner.Stdout, inner.Stderr = os.Stdin, os.Stdout, os.Stderr
	inner.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET,
		// A group of its own: a signal to this process's group (Ctrl-C
		// before CMD has the terminal, kill -INT -PGID) reaches the inner
		// process once, forwarded, not twice.
		Setpgid: true,
		// If this process dies, even by SIGKILL, the inner one tears
		// everything down (see innerMain).
		Pdeathsig: syscall.SIGTERM,
	}
	if rootless {
		userNamespace(inner.SysProcAttr, o.root)
	}
	if err := inner.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: starting the namespace process: %v\n", err)
		if rootless {
			reportProblems(rootlessProblems("/", "/dev/net/tun"))
		}
		return exitFailed
	}
	// Ignored only now, so that neither the inner process nor CMD inherits
	// it: taking the terminal back below, from a background group, would
	// otherwise stop this process.
	signal.Ignore(syscall.SIGTTOU)

	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigc:
				inner.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = inner.Wait()
	close(done)
	if foreground {
		// CMD had the terminal; if it could not give it back (the inner
		// process was killed), take it back for the shell.
		unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, unix.Getpgrp())
	}
	return exitStatus(inner.ProcessState, err)
}

// forwarded are the signals passed on to CMD. SIGCONT is how the shell
// resumes a job stopped with Ctrl-Z (see session.resume).
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGCONT}

// exitStatus is a waited-for process's status as a shell gives it: the exit
// code, or 128+N if signal N ended it.
func exitStatus(st *os.ProcessState, err error) int {
	if st == nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// userNamespace makes the inner process start in a new user namespace that
// maps the invoking user and group to themselves (or to root with asRoot),
// as `unshare -n --map-current-user` (`-r`) does. Mapped to themselves, the
// inner process would lose every capability at exec; CAP_NET_ADMIN (for the
// TUN device and routing) and CAP_NET_RAW (for the watchdog's ICMP socket)
// are kept as ambient capabilities, and cleared again before CMD runs.
func userNamespace(a *syscall.SysProcAttr, asRoot bool) {
	uid, gid := os.Getuid(), os.Getgid()
	insideUID, insideGID := uid, gid
	if asRoot {
		insideUID, insideGID = 0, 0
	}
	a.Cloneflags |= syscall.CLONE_NEWUSER
	a.UidMappings = []syscall.SysProcIDMap{{ContainerID: insideUID, HostID: uid, Size: 1}}
	a.GidMappings = []syscall.SysProcIDMap{{ContainerID: insideGID, HostID: gid, Size: 1}}
	a.GidMappingsEnableSetgroups = false // an unprivileged user may map a group only so
	if !asRoot {
		a.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW}
	}
}
