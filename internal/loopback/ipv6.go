//go:build linux

package loopback

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/uloop/uloop/route"
	"github.com/uloop/uloop/sockhook"
	"github.com/uloop/uloop/stack"
)

// loadHooks loads the socket hooks that steer ::1 into rcfg.IPv6, if it
// asks for IPv6. Where the process may not load them (a user namespace of
// its own: `uloop run` without root), it says so once and returns rcfg
// without IPv6: ::1 stays on lo, as with --ipv6=false.
func loadHooks(rcfg route.Config, log *slog.Logger) (*sockhook.Hooks, route.Config, error) {
	if !rcfg.IPv6.IsValid() {
		return nil, rcfg, nil
	}
	h, err := sockhook.Load(sockhook.Config{Prefix: rcfg.IPv6, Target: rcfg.IPv6Stack(), Kernel: rcfg.IPv6Kernel(), Device: rcfg.Device})
	if errors.Is(err, sockhook.ErrNotPermitted) {
		// The kernel's own reason (EPERM) adds nothing for the user.
		log.Warn("::1 stays on the kernel's lo: eBPF socket hooks need root (CAP_BPF and CAP_NET_ADMIN outside a user namespace); 127.0.0.0/8 goes through uloop as usual")
		log.Debug("loading the socket hooks", "err", err)
		rcfg.IPv6 = netip.Prefix{}
		return nil, rcfg, nil
	}
	if errors.Is(err, sockhook.ErrNoCgroup2) {
		log.Warn("::1 stays on the kernel's lo: no cgroup v2 hierarchy is mounted for the eBPF socket hooks; 127.0.0.0/8 goes through uloop as usual")
		rcfg.IPv6 = netip.Prefix{}
		return nil, rcfg, nil
	}
	if err != nil {
		return nil, rcfg, err
	}
	return h, rcfg, nil
}

// probe6 proves ::1 is carried: a kernel connection to [::1] reaches a
// listener on [::] through the stack, and both ends see ::1, as on lo.
func probe6(m *stack.Metrics) error {
	ln, err := net.Listen("tcp6", "[::]:0")
	if err != nil {
		return fmt.Errorf("probe listener: %w", err)
	}
	defer ln.Close()
	dial := netip.AddrPortFrom(netip.IPv6Loopback(), uint16(ln.Addr().(*net.TCPAddr).Port)).String()
	return probeThrough(ln, dial, m, 5*time.Second, func(peer net.Addr) error {
		if r := peer.(*net.TCPAddr); !r.IP.Equal(net.IPv6loopback) {
			return fmt.Errorf("server sees peer %v, want ::1", r)
		}
		return nil
	})
}

// IPv6Switch returns a descriptor of the socket hooks' hand-back switch
// (sockhook.Hooks.Switch), or nil if ::1 is not carried.
func (l *Loopback) IPv6Switch() (*os.File, error) {
	if l.hooks == nil {
		return nil, nil
	}
	return l.hooks.Switch()
}
