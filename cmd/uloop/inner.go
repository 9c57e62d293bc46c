//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/uloop/uloop/internal/loopback"
	"github.com/uloop/uloop/netns"
	"golang.org/x/sys/unix"
)

// innerMain is the process `uloop run` starts in the new namespaces. It
// brings the loopback up, serves the status socket, runs CMD, and exits with
// CMD's status once CMD has exited and everything else in the namespace has
// been killed.
func innerMain(args []string) int {
	// Caught before anything else: a signal during setup ends setup, with
	// CMD never started. SIGCHLD tells the wait loop that a child exited.
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, append(forwarded, syscall.SIGCHLD)...)
	outer := os.Getppid()
	// It ends by killing every other process in its network namespace:
	// run anywhere but in a namespace of its own (by hand, say), that
	// would be the host's.
	if err := requireOwnNetns(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}

	fs := flag.NewFlagSet(innerCommand, flag.ContinueOnError)
	sock := fs.String("socket", "", "status socket to serve")
	foreground := fs.Bool("foreground", false, "put CMD in the terminal's foreground")
	if err := fs.Parse(args); err != nil {
		return exitFailed
	}
	o, cmdArgs, err := parseRun("uloop run", fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: bad --log-level: %v\n", err)
		return exitFailed
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	o.SetProcs()

	s := &session{log: log, cmdPid: -1}
	code := s.run(o, *sock, *foreground, cmdArgs, sigc, outer)
	if err := s.close(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
	}
	return code
}

// requireOwnNetns fails unless this process is alone in its network
// namespace, as it is in the fresh one uloop run made for it (CMD is not
// started yet). Comparing with the parent's namespace is not possible
// without root: a process in a new user namespace may not read its
// parent's /proc entries.
func requireOwnNetns() error {
	here, err := netns.Current()
	if err != nil {
		return err
	}
	defer here.Close()
	others, err := here.Pids()
	if err != nil {
		return err
	}
	if len(others) > 0 {
		return fmt.Errorf("%s must be started by uloop run in a network namespace of its own; this one holds other processes (%d of them)", innerCommand, len(others))
	}
	return nil
}

// session is what the inner process holds.
type session struct {
	log    *slog.Logger
	lb     *loopback.Loopback
	ln     net.Listener
	sock   string
	cmdPid int // -1 until CMD runs
}

func (s *session) run(o runOptions, sock string, foreground bool, cmdArgs []string, sigc <-chan os.Signal, outer int) int {
	// Orphans of CMD (daemons, background jobs whose shell exited) come
	// to this process, so that none escapes the kill at the end.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: becoming the subreaper: %v\n", err)
		return exitFailed
	}
	rcfg, err := o.Route()
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	start := time.Now()
	// The namespace is new and ours alone: no other data path and no
	// killed predecessor's rules to clear, and no interface but lo and
	// ulo0 for an ICMP rate limit to protect.
	if err := loopback.NoICMPRateLimit(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	s.lb, err = loopback.Up(o.Options, rcfg, s.log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	if err := s.serve(sock); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: status socket: %v\n", err)
		return exitFailed
	}
	s.log.Info("uloop ready", "dev", o.Dev, "mtu", o.MTU, "prefix", rcfg.Prefix, "socket", sock, "setup", time.Since(start))
	if o.watchdog > 0 {
		// Before the capabilities go: it needs CAP_NET_RAW and
		// CAP_NET_ADMIN, passed down as ambient ones without root.
		sw, err := s.lb.IPv6Switch()
		if err == nil {
			err = startWatchdog(o, sw)
		}
		if sw != nil {
			sw.Close() // the watchdog has its own
		}
		if err != nil {
			s.log.Warn("running without a watchdog: a stopped uloop will hang loopback", "err", err)
		}
	}

	// CMD gets its capabilities from its user ID alone: none without
	// root, whatever this process holds (CAP_NET_ADMIN, ambient).
	if err := loopback.ClearInheritable(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		return exitFailed
	}
	// A signal that came during setup: CMD never starts.
	select {
	case sig := <-sigc:
		// SIGCONT: the shell resuming uloop run after a Ctrl-Z during
		// setup; nothing to end.
		if sig != syscall.SIGCHLD && sig != syscall.SIGCONT {
			return 128 + int(sig.(syscall.Signal))
		}
	default:
	}

	cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A group of its own, which gets the signals passed on, so they
		// reach CMD's children as Ctrl-C would; in the terminal's
		// foreground if uloop run was (Ctty is CMD's stdin).
		Setpgid:    true,
		Foreground: foreground,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitCannotExec
	}
	s.cmdPid = cmd.Process.Pid
	if foreground {
		// Only now, so that CMD does not inherit it: giving the terminal
		// back to CMD after a Ctrl-Z (below) is done from a background
		// process group.
		signal.Ignore(syscall.SIGTTOU)
	}
	// cmd.Wait is never called: reap below takes every child, CMD
	// included (cmd has no copying goroutines: its files are *os.File).
	for {
		sig := <-sigc
		switch {
		case sig == syscall.SIGCHLD:
			ws, ok := s.reap()
			if ok && ws.Stopped() {
				if foreground {
					s.suspend(outer)
				}
				continue
			}
			if ok {
				if ws.Signaled() {
					return 128 + int(ws.Signal())
				}
				return ws.ExitStatus()
			}
		case sig == syscall.SIGCONT:
			if foreground {
				s.resume(outer)
			}
			unix.Kill(-s.cmdPid, syscall.SIGCONT)
		case sig == syscall.SIGTERM && os.Getppid() != outer:
			// The parent-death signal: uloop run is gone (killed), so
			// nobody waits for CMD's status. End it all.
			s.log.Warn("uloop run was killed; stopping the command")
			return 128 + int(syscall.SIGKILL)
		default:
			unix.Kill(-s.cmdPid, sig.(syscall.Signal))
		}
	}
}

// Job control, for a CMD in the terminal's foreground: when Ctrl-Z (or any
// stop signal) stops CMD, suspend stops `uloop run` too, so that the user's
// shell sees its job stopped and takes the terminal back; when the shell
// resumes the job (fg: the terminal given to uloop run's group, then
// SIGCONT, which uloop run passes here), resume hands the terminal on to
// CMD's group before CMD continues. After bg the terminal stays the shell's.
func (s *session) suspend(outer int) {
	unix.Kill(outer, syscall.SIGSTOP)
}

func (s *session) resume(outer int) {
	fg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	if err != nil {
		return
	}
	if outerGroup, err := unix.Getpgid(outer); err == nil && fg == outerGroup {
		unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, s.cmdPid)
	}
}

// reap reaps every child that has exited, and returns CMD's status if CMD
// was one of them, or if CMD was stopped (ws.Stopped()) and nothing ended.
func (s *session) reap() (syscall.WaitStatus, bool) {
	var cmdStatus syscall.WaitStatus
	found := false
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG|syscall.WUNTRACED, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return cmdStatus, found
		}
		if pid == s.cmdPid && !(found && !cmdStatus.Stopped()) {
			cmdStatus, found = ws, true
		}
	}
}

// serve listens on the status socket and serves the control HTTP there.
// The socket's directory (sessionDir) is the user's alone.
func (s *session) serve(path string) error {
	os.Remove(path) // a stale socket of a dead process that had our outer PID
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s.ln, s.sock = ln, path
	go loopback.Serve(ln, s.lb.Stack, s.log)
	return nil
}

// close kills what is left in the namespace (CMD's process group, and any
// process that left it) and removes the status socket. The data path is not
// taken down: with no program left in the namespace there is nobody to
// reset connections for, and when this process exits the kernel deletes
// the TUN device with its routes and, the last process gone, the namespace.
// (Closing the stack took 15 to 25 ms here, a fifth of `uloop run -- true`.)
func (s *session) close() error {
	if s.cmdPid > 0 {
		unix.Kill(-s.cmdPid, unix.SIGKILL)
	}
	here, err := netns.Current()
	if err == nil {
		err = here.KillAll(5 * time.Second)
		here.Close()
	}
	if s.ln != nil {
		s.ln.Close()
		os.Remove(s.sock)
	}
	return err
}
