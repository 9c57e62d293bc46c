//go:build linux

// Package loopback brings uloop's data path up in the calling process's
// network namespace and takes it down again: the TUN device, the stack on
// it, the routing takeover, and the probe that proves packets cross them.
// It also serves the control HTTP (metrics, flows, pprof). uloopd and
// `uloop run` are both built on it, so the two set up the same way and
// share their flags.
package loopback

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/uloop/uloop/impair"
	"github.com/uloop/uloop/route"
	"github.com/uloop/uloop/sockhook"
	"github.com/uloop/uloop/stack"
	"github.com/uloop/uloop/tundev"
)

// Options are the data path's settings, the flags uloopd and `uloop run`
// share.
type Options struct {
	Dev        string
	MTU        int
	Prefix     string
	UDPTimeout time.Duration
	MaxFlows   int
	Offload    bool
	Procs      int
	IPv6       bool
	// Impair are the impairment rules to start with (--impair, repeatable;
	// see the impair package for the syntax).
	Impair []string
}

// AddFlags registers the shared flags on fs, with their defaults, into o.
// what names the program in the help texts ("uloopd", "uloop").
func (o *Options) AddFlags(fs *flag.FlagSet, what string) {
	fs.StringVar(&o.Dev, "dev", tundev.DefaultName, "name of the TUN device to create")
	fs.IntVar(&o.MTU, "mtu", tundev.DefaultMTU, "MTU of the TUN device")
	fs.StringVar(&o.Prefix, "prefix", "127.0.0.0/8", "part of 127.0.0.0/8 to take over; the rest stays on the kernel's lo")
	fs.DurationVar(&o.UDPTimeout, "udp-timeout", stack.DefaultUDPIdleTimeout, "close a relayed UDP flow after this long without a datagram")
	fs.IntVar(&o.MaxFlows, "max-flows", stack.DefaultMaxFlows, "TCP connections and UDP flows relayed at once; past it new ones are refused at once")
	fs.BoolVar(&o.Offload, "offload", true, "use TUN offloads (TSO, checksum offload, GSO writes)")
	fs.BoolVar(&o.IPv6, "ipv6", true, "carry ::1 too, with eBPF socket hooks (needs root: CAP_BPF and CAP_NET_ADMIN); false keeps ::1 on the kernel's lo")
	fs.Func("impair", "impair chosen ports, e.g. 'tcp:5432 delay=80ms jitter=5ms loss=1%' (repeatable; see docs/usage.md)", func(s string) error {
		if _, err := impair.Parse(s); err != nil {
			return err
		}
		o.Impair = append(o.Impair, s)
		return nil
	})
	fs.IntVar(&o.Procs, "procs", 0, "CPUs "+what+" runs Go code on at once (GOMAXPROCS); 0: half the CPUs, at least 1, unless GOMAXPROCS is set")
}

// Route checks the options and returns the routing takeover they ask for.
func (o *Options) Route() (route.Config, error) {
	prefix, err := netip.ParsePrefix(o.Prefix)
	if err != nil {
		return route.Config{}, fmt.Errorf("bad --prefix: %w", err)
	}
	rcfg := route.Config{Device: o.Dev, Prefix: prefix.Masked()}
	if o.IPv6 {
		rcfg.IPv6 = route.DefaultIPv6
	}
	if err := rcfg.Validate(); err != nil {
		return route.Config{}, err
	}
	if o.Procs < 0 {
		return route.Config{}, fmt.Errorf("bad --procs %d: want 0 (automatic) or more", o.Procs)
	}
	if o.MaxFlows < 1 {
		return route.Config{}, fmt.Errorf("bad --max-flows %d: want at least 1", o.MaxFlows)
	}
	return rcfg, nil
}

// SetProcs sets how many CPUs run the data path's Go code at once (--procs).
// Every byte uloop carries has a client and a server on the same machine,
// which need CPU too: on the 2-core machine here, one P instead of two
// doubled the connection rate and UDP throughput and left single-stream TCP
// where it was (docs/performance.md). So by default it takes half the CPUs.
func (o *Options) SetProcs() {
	n := o.Procs
	if n == 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return
		}
		n = max(1, runtime.NumCPU()/2)
	}
	runtime.GOMAXPROCS(n)
}

// A Loopback is the data path, up: the stack on its TUN device, with the
// namespace's traffic to the prefix routed into it.
type Loopback struct {
	Stack    *stack.Stack
	Route    route.Config // Route.IPv6 is valid only if ::1 is carried
	takeover *route.Takeover
	hooks    *sockhook.Hooks // nil unless ::1 is carried
}

// Up creates the TUN device, starts the stack on it, routes rcfg's prefix
// into it and probes the path: once it returns, a kernel connection to the
// prefix is relayed by the stack. On error everything it did is undone.
// The caller must hold whatever keeps a second data path out of the
// namespace (uloopd's control socket; a namespace of its own for `uloop
// run`), and clear a killed predecessor's rules first if there can be one.
func Up(o Options, rcfg route.Config, log *slog.Logger) (*Loopback, error) {
	if o.MTU > tundev.DefaultMTU {
		log.Warn("MTU above the default: the stack will relay each of the kernel's full TCP segments as two, which costs throughput", "mtu", o.MTU, "default", tundev.DefaultMTU)
	}
	dev, err := tundev.Create(o.Dev, o.MTU, o.Offload)
	if err != nil {
		return nil, err
	}
	// Loaded before the routing changes (they depend on it): without the
	// privilege to load them ::1 stays on lo, as with --ipv6=false.
	hooks, rcfg, err := loadHooks(rcfg, log)
	if err != nil {
		dev.Close()
		return nil, err
	}
	metrics := new(stack.Metrics)
	rules := new(impair.Table)
	st, err := stack.New(stack.Config{
		Impair:         rules,
		Device:         dev,
		Metrics:        metrics,
		Logger:         log,
		UDPIdleTimeout: o.UDPTimeout,
		MaxFlows:       o.MaxFlows,
		DisableGSO:     !o.Offload,
		IPv6:           rcfg.IPv6,
	})
	if err != nil {
		hooks.Close()
		dev.Close()
		return nil, err
	}
	takeover, err := route.Apply(rcfg)
	if err != nil {
		hooks.Close()
		st.Close()
		return nil, err
	}
	l := &Loopback{Stack: st, Route: rcfg, takeover: takeover, hooks: hooks}
	if err := probe(rcfg.Source(), metrics, 5*time.Second); err != nil {
		return nil, errors.Join(fmt.Errorf("data path does not answer: %w", err), l.Close())
	}
	if hooks != nil {
		// Last: ::1 is steered only once the path it is steered into works.
		if err := hooks.Attach(); err != nil {
			return nil, errors.Join(err, l.Close())
		}
		if err := probe6(metrics); err != nil {
			return nil, errors.Join(fmt.Errorf("::1 data path does not answer: %w", err), l.Close())
		}
	}
	// Only now: a rule may well blackhole the probe's address.
	for _, spec := range o.Impair {
		r, err := rules.Add(spec)
		if err != nil {
			return nil, errors.Join(err, l.Close())
		}
		log.Info("impairment", "id", r.ID, "rule", r.Spec)
	}
	return l, nil
}

// Close closes the stack, then undoes the routing. The stack goes first: it
// resets every relayed connection while the TUN still carries the resets.
// Once the routes are gone the kernel would deliver the two peers' packets
// to each other directly, with sequence numbers neither knows.
func (l *Loopback) Close() error {
	// New ::1 sockets go back to lo first; the stack then resets those it
	// relays, as for 127/8.
	hookErr := l.hooks.Close()
	l.Stack.Close()
	if err := errors.Join(hookErr, l.takeover.Undo()); err != nil {
		return fmt.Errorf("restoring host state: %w", err)
	}
	return nil
}
