// Package sockhook carries programs' ::1 traffic through uloop's TUN device
// with eBPF cgroup socket hooks.
//
// Linux refuses ::1 on any device but lo and drops packets to or from ::1
// that arrive on another (RFC 4291 2.5.3), and NAT cannot get around it
// (the route lookup after a DNAT to ::1 fails). So instead of routing
// packets, the hooks change where sockets send: a connect or sendmsg to
// [::1]:P becomes one to [S]:P, S being the stack's address in a /64
// routed to the device, and getpeername, getsockname and recvmsg show every
// address of that /64 as ::1. Programs then see ::1 on both ends, as on lo.
//
// The programs are built in Go (cilium/ebpf's asm package, no compiler),
// attached to the root of the cgroup v2 hierarchy as bpf_links, and act
// only on sockets of one network namespace (its cookie). Links end with
// the process that holds them, even on SIGKILL: ::1 then works through lo
// again, as it does when Close detaches them.
package sockhook

import (
	"errors"
	"net/netip"
)

// Config says what to steer.
type Config struct {
	// Prefix is the /64 routed to the device, whose every address is shown
	// as ::1; it must serve nothing else.
	Prefix netip.Prefix
	// Target is the address in Prefix that ::1 is steered to.
	Target netip.Addr
	// Kernel is the kernel's address in Prefix, on the device: where the
	// stack reaches servers, and where the lookup hook hands connections
	// to TCP listeners bound to [::1].
	Kernel netip.Addr
	// Device is the TUN device: the lookup hook acts only on what arrives
	// there.
	Device string
	// Mark is the SO_MARK of sockets never steered (uloop's own); 0 means
	// DefaultMark.
	Mark uint32
}

// DefaultMark is the SO_MARK that exempts a socket from steering ("uloo").
const DefaultMark = 0x756c6f6f

// ErrNotPermitted is returned by Attach when the process may not load BPF
// programs (without CAP_BPF and CAP_NET_ADMIN, or in a user namespace of
// its own: the kernel allows neither there).
var ErrNotPermitted = errors.New("loading eBPF socket hooks is not permitted (needs CAP_BPF and CAP_NET_ADMIN in the initial user namespace)")

// ErrNoCgroup2 is returned by Load when no cgroup v2 hierarchy is mounted:
// the hooks have nowhere to attach.
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted (the socket hooks attach to its root)")

func (c Config) validate() error {
	switch {
	case !c.Prefix.IsValid() || !c.Prefix.Addr().Is6() || c.Prefix.Bits() != 64:
		return errors.New("sockhook: prefix must be an IPv6 /64")
	case !c.Prefix.Contains(c.Target) || !c.Prefix.Contains(c.Kernel):
		return errors.New("sockhook: target and kernel addresses must lie in the prefix")
	}
	return nil
}
