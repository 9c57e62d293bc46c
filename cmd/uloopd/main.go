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
// READY=1 to systemd when NOTIFY_SOCKET is set), and on SIGINT or SIGTERM
// undoes every change it made.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/uloop/uloop/route"
	"github.com/uloop/uloop/stack"
	"github.com/uloop/uloop/tundev"
)

type options struct {
	netns        string
	dev          string
	mtu          int
	prefix       string
	udpTimeout   time.Duration
	cleanup      bool
	logLevel     string
	controlGroup int
	maxFlows     int
	offload      bool
	procs        int
}

func main() {
	var o options
	flag.StringVar(&o.netns, "netns", "", "take over loopback in the named network namespace (/run/netns/NAME) instead of the current one")
	flag.StringVar(&o.dev, "dev", tundev.DefaultName, "name of the TUN device to create")
	flag.IntVar(&o.mtu, "mtu", tundev.DefaultMTU, "MTU of the TUN device")
	flag.StringVar(&o.prefix, "prefix", "127.0.0.0/8", "part of 127.0.0.0/8 to take over; the rest stays on the kernel's lo")
	flag.DurationVar(&o.udpTimeout, "udp-timeout", stack.DefaultUDPIdleTimeout, "close a relayed UDP flow after this long without a datagram")
	flag.BoolVar(&o.cleanup, "cleanup", false, "remove the rules, routes and device a killed uloopd left, then exit")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.IntVar(&o.controlGroup, "control-group", -1, "numeric group that may use the control socket besides root")
	flag.IntVar(&o.maxFlows, "max-flows", stack.DefaultMaxFlows, "TCP connections and UDP flows relayed at once; past it new ones are refused at once")
	flag.BoolVar(&o.offload, "offload", true, "use TUN offloads (TSO, checksum offload, GSO writes)")
	flag.IntVar(&o.procs, "procs", 0, "CPUs uloopd runs Go code on at once (GOMAXPROCS); 0: half the CPUs, at least 1, unless GOMAXPROCS is set")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "uloopd: bad --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	setProcs(o.procs)
	if err := run(o, log); err != nil {
		log.Error("uloopd failed", "err", err)
		os.Exit(1)
	}
}

// setProcs sets how many CPUs run uloopd's Go code at once. Every byte
// uloopd carries has a client and a server on the same machine, which need
// CPU too: on the 2-core machine here, one P instead of two doubled the
// connection rate and UDP throughput and left single-stream TCP where it
// was (docs/performance.md). So by default uloopd takes half the CPUs.
func setProcs(n int) {
	if n == 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return
		}
		n = max(1, runtime.NumCPU()/2)
	}
	runtime.GOMAXPROCS(n)
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
	prefix, err := netip.ParsePrefix(o.prefix)
	if err != nil {
		return fmt.Errorf("bad --prefix: %w", err)
	}
	rcfg := route.Config{Device: o.dev, Prefix: prefix.Masked()}
	if err := rcfg.Validate(); err != nil {
		return err
	}
	if o.procs < 0 {
		return fmt.Errorf("bad --procs %d: want 0 (automatic) or more", o.procs)
	}
	if o.maxFlows < 1 {
		return fmt.Errorf("bad --max-flows %d: want at least 1", o.maxFlows)
	}
	if o.cleanup {
		if err := route.Cleanup(rcfg); err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		log.Info("cleanup done", "dev", o.dev, "prefix", rcfg.Prefix)
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

	dev, err := tundev.Create(o.dev, o.mtu, o.offload)
	if err != nil {
		return err
	}
	metrics := new(stack.Metrics)
	st, err := stack.New(stack.Config{
		Device:         dev,
		Metrics:        metrics,
		Logger:         log,
		UDPIdleTimeout: o.udpTimeout,
		MaxFlows:       o.maxFlows,
		DisableGSO:     !o.offload,
	})
	if err != nil {
		dev.Close()
		return err
	}
	takeover, err := route.Apply(rcfg)
	if err != nil {
		st.Close()
		return err
	}
	defer func() {
		if uerr := takeover.Undo(); uerr != nil {
			err = errors.Join(err, fmt.Errorf("restoring host state: %w", uerr))
		} else {
			log.Info("host state restored")
		}
	}()
	// Close the stack before the routes are restored (defers run last in,
	// first out): it resets every relayed connection while the TUN still
	// carries the resets. Once the routes are gone the kernel would deliver
	// the two peers' packets to each other directly, with sequence numbers
	// neither knows.
	defer st.Close()

	go serveControl(ctl, st, log)

	if err := probe(rcfg.Source(), metrics); err != nil {
		return fmt.Errorf("data path does not answer: %w", err)
	}
	if err := dropCapabilities(); errors.Is(err, errCapsNeedNoCgo) {
		log.Warn("keeping all capabilities", "err", err)
	} else if err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	log.Info("uloopd ready", "dev", o.dev, "mtu", o.mtu, "prefix", rcfg.Prefix, "udp_timeout", o.udpTimeout, "procs", runtime.GOMAXPROCS(0))
	if err := notifySystemd("READY=1"); err != nil {
		log.Warn("telling systemd we are ready", "err", err)
	}

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
		destroySockets(st.TCPConnections(), log)
		return fmt.Errorf("reading TUN device %s: %w (was it deleted?)", o.dev, st.Err())
	}
}
