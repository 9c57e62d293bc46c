//go:build linux

// Command uloopd is uloop's daemon: it takes over the IPv4 loopback block
// (127.0.0.0/8, or part of it) of the network namespace it runs in and
// carries every packet through a userspace TCP/IP stack.
//
//	ip netns exec NS uloopd            # take over 127.0.0.0/8 in NS
//	uloopd --netns NS                  # the same, from outside NS
//	uloopd --prefix 127.77.0.0/16      # only part of the block
//	uloopd --cleanup                   # remove what a killed uloopd left
//
// It logs a line containing "ready" once the data path answers (and sends
// READY=1 to systemd when NOTIFY_SOCKET is set, then WATCHDOG=1 while the
// data path answers if the unit has WatchdogSec=), and on SIGINT or SIGTERM
// undoes every change it made.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/uloop/uloop/internal/loopback"
	"github.com/uloop/uloop/route"
)

type options struct {
	loopback.Options
	netns        string
	cleanup      bool
	logLevel     string
	controlGroup int
}

func main() {
	var o options
	o.AddFlags(flag.CommandLine, "uloopd")
	flag.StringVar(&o.netns, "netns", "", "take over loopback in the named network namespace (/run/netns/NAME) instead of the current one")
	flag.BoolVar(&o.cleanup, "cleanup", false, "remove the rules, routes and device a killed uloopd left, then exit")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.IntVar(&o.controlGroup, "control-group", -1, "numeric group that may use the control socket besides root")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "uloopd: bad --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	o.SetProcs()
	if err := run(o, log); err != nil {
		log.Error("uloopd failed", "err", err)
		os.Exit(1)
	}
}

func run(o options, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		return errors.New("uloopd must run as root: it creates a TUN device and changes routing (CAP_NET_ADMIN)")
	}
	if o.netns != "" {
		// Does not return on success: the process continues, re-executed,
		// inside the namespace.
		return reexecInNetns(o.netns)
	}
	rcfg, err := o.Route()
	if err != nil {
		return err
	}
	if o.cleanup {
		if err := route.Cleanup(rcfg); err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		log.Info("cleanup done", "dev", o.Dev, "prefix", rcfg.Prefix)
		return nil
	}
	return serve(o, rcfg, log)
}

// serve runs the data path until a signal or a device failure. Each step it
// takes is undone, in reverse order, on every way out.
func serve(o options, rcfg route.Config, log *slog.Logger) (err error) {
	// Catch signals before changing anything, so that one arriving during
	// setup still ends in the undo below rather than killing the process
	// with its changes in place.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The control socket is taken first: it is also the lock that keeps a
	// second uloopd out of this namespace before it touches anything.
	ctl, err := listenControl(o.controlGroup)
	if err != nil {
		return err
	}
	defer ctl.Close()

	// A uloopd killed before it could undo its changes left rules that
	// Apply would take for the namespace's own (and so keep on Undo).
	// Holding the lock, nothing else here owns rules of ours.
	if err := route.CleanupRouting(rcfg); err != nil {
		return fmt.Errorf("removing a previous uloopd's leftovers: %w", err)
	}

	lb, err := loopback.Up(o.Options, rcfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := lb.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			log.Info("host state restored")
		}
	}()
	st := lb.Stack
	go loopback.Serve(ctl, st, log)

	if err := loopback.DropCapabilities(); errors.Is(err, loopback.ErrCapsNeedNoCgo) {
		log.Warn("keeping all capabilities", "err", err)
	} else if err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	log.Info("uloopd ready", "dev", o.Dev, "mtu", o.MTU, "prefix", rcfg.Prefix, "udp_timeout", o.UDPTimeout, "procs", runtime.GOMAXPROCS(0))
	notifyReady(log)
	go superviseForSystemd(ctx, lb, log)

	select {
	case <-ctx.Done():
		log.Info("stopping", "reason", "signal")
		return nil
	case <-st.Done():
		// The resets the stack would send on close cannot leave through a
		// device that is gone, and with the routes gone the two kernel
		// sockets of each relayed connection would talk to each other
		// directly with sequence numbers neither knows, until TCP gives
		// up (about 15 minutes). Destroy them (ss -K) so that both
		// programs see an error now.
		destroySockets(st.Flows(), log)
		return fmt.Errorf("reading TUN device %s: %w (was it deleted?)", o.Dev, st.Err())
	}
}
