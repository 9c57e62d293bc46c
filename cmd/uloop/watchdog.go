//go:build linux

package main

import (
	"context"
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
	"github.com/uloop/uloop/netns"
	"github.com/uloop/uloop/route"
	"github.com/uloop/uloop/sockhook"
	"golang.org/x/sys/unix"
)

// startWatchdog starts the watchdog process for the session's data path.
// It runs in the inner process's namespaces and process group (not CMD's,
// so Ctrl-C does not reach it), is reaped by the inner process's wait loop
// like any child, and is killed with everything else at the end.
func startWatchdog(o runOptions, ipv6Switch *os.File) error {
	w := exec.Command("/proc/self/exe", watchdogCommand,
		"--dev", o.Dev, "--prefix", o.Prefix, "--after", o.watchdog.String(), "--parent", strconv.Itoa(os.Getpid()))
	w.Args[0] = os.Args[0]
	if ipv6Switch != nil {
		// The socket hooks' switch: the hooks belong to the inner
		// process, which may be the one stopped.
		w.ExtraFiles = []*os.File{ipv6Switch}
		w.Args = append(w.Args, "--ipv6-switch-fd", "3")
	}
	w.Stderr = os.Stderr
	// No parent-death signal: it is sent when the forking thread exits,
	// which, while the inner process is being killed, is before the process
	// is gone. The watchdog watches the inner process itself (watchdogMain).
	return w.Start()
}

// watchdogMain is the watchdog process: it pings the stack through the TUN
// every second and, once no reply has come for --after, hands 127/8 back to
// the kernel's lo and says so on stderr. CMD goes on running, on lo. It is
// a process of its own because the inner process may be the one that is
// stopped (SIGSTOP, a debugger) or wedged.
//
// It also covers the inner process being killed: CMD dies then (its
// parent-death signal), but processes CMD started could go on in the
// namespace. When its parent exits, the watchdog kills every process left
// in the namespace, as the inner process does when CMD exits, and exits.
func watchdogMain(args []string) int {
	fs := flag.NewFlagSet(watchdogCommand, flag.ContinueOnError)
	var o loopback.Options
	o.AddFlags(fs, "uloop")
	after := fs.Duration("after", 3*time.Second, "hand loopback back after this long without an answer")
	switchFD := fs.Int("ipv6-switch-fd", -1, "descriptor of the socket hooks' hand-back switch, if ::1 is carried")
	parent := fs.Int("parent", 0, "PID of the inner process that started the watchdog")
	if err := fs.Parse(args); err != nil {
		return exitFailed
	}

	// The inner process's PID comes as a flag: it may be killed before
	// this process gets here, and os.Getppid() would then name whoever
	// adopted it.
	parentGone := make(chan struct{})
	go func() {
		if *parent > 0 && waitExit(*parent) == nil {
			close(parentGone)
		}
	}()
	defer func() {
		select {
		case <-parentGone:
			if here, err := netns.Current(); err == nil {
				here.KillAll(5 * time.Second)
				here.Close()
			}
		default:
		}
	}()
	rcfg, err := o.Route()
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: watchdog: %v\n", err)
		return exitFailed
	}
	p, err := loopback.NewEchoProbe(rcfg.Source())
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: watchdog: %v\n", err)
		return exitFailed
	}
	defer p.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-parentGone
		cancel()
	}()
	err = loopback.Watch(ctx, p, rcfg, *after)
	if errors.Is(err, context.Canceled) {
		return 0
	}
	what, verb := rcfg.Prefix.String(), "is"
	if *switchFD >= 0 && err == nil {
		// ::1 too: the socket hooks stop steering it to the TUN, and
		// what they steered before reaches lo.
		rcfg.IPv6 = route.DefaultIPv6
		err = sockhook.HandBack(os.NewFile(uintptr(*switchFD), "uloop-ipv6-switch"))
		if err == nil {
			err = route.HandBack6(rcfg)
		}
		what, verb = what+" and ::1", "are"
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: the loopback stopped answering, and handing it back to lo failed: %v\n", err)
	} else {
		fmt.Fprintf(os.Stderr, "uloop run: the loopback stopped answering for %v (is uloop stopped?); %s %s handed back to the kernel's lo for the rest of this run, and connections open through uloop will fail\n", *after, what, verb)
	}
	// Stays, for the inner process being killed later.
	<-ctx.Done()
	return 0
}

// waitExit returns nil once process pid, the caller's parent, has exited
// with all its threads (its pidfd is readable then), and an error at once
// if it cannot be watched (a kernel before 5.3).
func waitExit(parent int) error {
	fd, err := unix.PidfdOpen(parent, 0)
	if os.Getppid() != parent { // it exited before the pidfd was open
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
		if err != unix.EINTR {
			return err
		}
	}
}
