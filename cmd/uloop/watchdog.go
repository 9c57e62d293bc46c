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
	"syscall"
	"time"

	"github.com/uloop/uloop/internal/loopback"
)

// startWatchdog starts the watchdog process for the session's data path.
// It runs in the inner process's namespaces and process group (not CMD's,
// so Ctrl-C does not reach it), is reaped by the inner process's wait loop
// like any child, and is killed with everything else at the end.
func startWatchdog(o runOptions) error {
	w := exec.Command("/proc/self/exe", watchdogCommand,
		"--dev", o.Dev, "--prefix", o.Prefix, "--after", o.watchdog.String())
	w.Args[0] = os.Args[0]
	w.Stderr = os.Stderr
	// If the inner process dies, the namespace goes with it.
	w.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return w.Start()
}

// watchdogMain is the watchdog process: it pings the stack through the TUN
// every second and, once no reply has come for --after, hands 127/8 back to
// the kernel's lo, says so on stderr and exits. CMD goes on running, on lo.
// It is a process of its own because the inner process may be the one
// that is stopped (SIGSTOP, a debugger) or wedged.
func watchdogMain(args []string) int {
	fs := flag.NewFlagSet(watchdogCommand, flag.ContinueOnError)
	var o loopback.Options
	o.AddFlags(fs, "uloop")
	after := fs.Duration("after", 3*time.Second, "hand loopback back after this long without an answer")
	if err := fs.Parse(args); err != nil {
		return exitFailed
	}
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
	if err := loopback.Watch(ctx, p, rcfg, *after); errors.Is(err, context.Canceled) {
		return 0
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "uloop run: the loopback stopped answering, and handing it back to lo failed: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(os.Stderr, "uloop run: the loopback stopped answering for %v (is uloop stopped?); %v is handed back to the kernel's lo for the rest of this run, and connections open through uloop will fail\n", *after, rcfg.Prefix)
	return 0
}
