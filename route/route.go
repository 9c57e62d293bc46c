// Package route makes the kernel send locally generated 127.0.0.0/8 traffic
// through a TUN device instead of lo, and puts the host back as it was.
//
// Linux delivers loopback traffic through lo because rule 0 looks up the
// local table before anything else. A takeover changes the IPv4 policy
// routing to (priorities with the defaults):
//
//	0:     (removed; was: from all lookup local)
//	1:     from all to 127.0.0.0/8 iif lo lookup 127
//	2:     from all lookup local
//	table 127: 127.0.0.0/8 dev ulo0 scope link src 127.0.0.1
//
// Output route lookups carry iif lo, so only locally generated packets take
// rule 1 and leave through the TUN. Packets the stack writes back into the
// TUN arrive with iif ulo0, skip rule 1, and rule 2 delivers them locally.
// Priorities Priority and Priority+1 belong to this package; nothing else
// should put rules there. IPv6 is not touched: the kernel drops ::1 arriving
// on any device that is not IFF_LOOPBACK, so lo keeps serving ::1.
package route

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

const (
	// DefaultTable is the routing table holding "<prefix> dev <tun>".
	DefaultTable = 127
	// DefaultPriority is the priority of our rule; the local rule moves to
	// DefaultPriority+1.
	DefaultPriority = 1
)

// loopbackNet is the block the kernel treats as loopback (RFC 1122 3.2.1.3).
var loopbackNet = netip.MustParsePrefix("127.0.0.0/8")

var (
	localhost = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	// loopbackBroadcast is the broadcast address the kernel gives lo's
	// 127.0.0.1/8 (table local): no TCP connection can use it.
	loopbackBroadcast = netip.AddrFrom4([4]byte{127, 255, 255, 255})
)

// Config says which part of 127.0.0.0/8 goes through which device. Sockets
// that do not bind a source get one inside the prefix (see Source).
type Config struct {
	Device   string       // TUN device name (exists and is created by the caller)
	Prefix   netip.Prefix // part of 127.0.0.0/8 taken over; zero value means 127.0.0.0/8
	Table    int          // 0 means DefaultTable
	Priority int          // 0 means DefaultPriority
	// IPv6, if valid, is the /64 that carries ::1 through the device
	// (the socket hooks rewrite ::1 into it): Apply leaves IPv6 on for the
	// device and gives it IPv6Kernel. The zero value turns IPv6 off on the
	// device, as before ::1 was carried.
	IPv6 netip.Prefix
}

func (c Config) withDefaults() Config {
	if c.Prefix == (netip.Prefix{}) {
		c.Prefix = loopbackNet
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	return c
}

// Validate reports whether c can be applied: the prefix must be an IPv4
// prefix inside 127.0.0.0/8 without host bits, the device a valid interface
// name other than lo, the table not one of the kernel's reserved ones (252 to
// 255), and both our priority and the moved local rule must come before the
// main table's rule (32766), or main could shadow local addresses.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := validDevice(c.Device); err != nil {
		return err
	}
	p := c.Prefix
	switch {
	case !p.IsValid() || !p.Addr().Is4():
		return fmt.Errorf("prefix %v: want an IPv4 prefix", p)
	case p.Bits() < loopbackNet.Bits() || !loopbackNet.Contains(p.Addr()):
		return fmt.Errorf("prefix %v: not inside %v", p, loopbackNet)
	case p != p.Masked():
		return fmt.Errorf("prefix %v: host bits set (did you mean %v?)", p, p.Masked())
	case p == netip.PrefixFrom(loopbackBroadcast, 32):
		return fmt.Errorf("prefix %v: the broadcast address of 127.0.0.0/8 carries no TCP (no address to work from)", p)
	}
	if c.Table < 0 || int64(c.Table) > math.MaxUint32 || (c.Table >= 252 && c.Table <= 255) {
		return fmt.Errorf("table %d: want 1 to 251 or 256 to 4294967295", c.Table)
	}
	if c.Priority < 0 || c.Priority+1 >= 32766 {
		return fmt.Errorf("priority %d: want 1 to 32764", c.Priority)
	}
	if p := c.IPv6; p.IsValid() && (!p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() != 64 || p != p.Masked()) {
		return fmt.Errorf("IPv6 prefix %v: want a /64 without host bits", p)
	}
	return nil
}

// validDevice follows the kernel's dev_valid_name, which rejects names it
// could not show in /proc/sys/net/.../conf/<name> or /sys/class/net/<name>.
func validDevice(name string) error {
	switch {
	case name == "":
		return errors.New("device name is empty")
	case len(name) > 15: // IFNAMSIZ-1
		return fmt.Errorf("device %q: name longer than 15 bytes", name)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r\x00"):
		return fmt.Errorf("device %q: not a valid interface name", name)
	case name == "lo":
		return errors.New("device lo: must be a TUN device, not the loopback device")
	}
	return nil
}

// Source is the address a takeover of c.Prefix works from: the preferred
// source of the route through the TUN, so the source of every locally
// generated connection to the prefix that does not bind one, and the address
// uloopd's ready probe listens and connects on. One function gives both: a
// probe on any other address would either not go through the TUN at all or
// prove nothing about the traffic programs send.
//
// It lies inside the prefix so that replies to it are locally generated
// traffic to the prefix as well and go back through the TUN; with 127.0.0.1
// as the source of a 127.77.0.0/16 takeover, the server's replies would go
// straight to the client through lo, past the relay. It also keeps
// reverse-path filtering happy (see deviceSysctls). The choice:
//   - 127.0.0.1 if the prefix holds it, the address programs expect;
//   - for a /32, its one address (the probe then connects from that
//     address to itself, as a connection to 127.0.0.1 on lo does);
//   - for a /31, its first address: a /31 has no network address (RFC
//     3021), and the second address of 127.255.255.254/31 is the block's
//     broadcast address, to which the kernel refuses TCP (ENETUNREACH);
//   - otherwise the first address after the network address.
//
// Validate refuses the one prefix left without a usable address,
// 127.255.255.255/32.
func (c Config) Source() netip.Addr {
	c = c.withDefaults()
	switch p := c.Prefix; {
	case p.Contains(localhost):
		return localhost
	case p.Bits() >= 31:
		return p.Addr()
	default:
		return p.Addr().Next()
	}
}

// Test hooks, nil outside tests. afterStep runs after each step of Apply,
// with the step's number from 1, and makes Apply fail there if it returns an
// error. afterUndoStep runs after each change Undo reverts.
var (
	afterStep     func(step int) error
	afterUndoStep func()
)

// Takeover records the changes Apply made, so Undo can revert exactly those.
type Takeover struct {
	mu sync.Mutex
	// undo holds one function per change made, in the order made. Apply
	// fills it before any other goroutine can see the Takeover.
	// +checklocks:mu
	undo []func() error
}

// Undo reverts the recorded changes in reverse order, going on after a failed
// step and returning all errors joined. The local rule goes back to priority
// 0 first, so 127.0.0.0/8 stays deliverable until lo goes back down (if
// Apply brought it up). State that went away
// with the device (its routes and sysctls) counts as reverted. A second call
// does nothing and returns nil.
func (t *Takeover) Undo() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, undo := range slices.Backward(t.undo) {
		errs = append(errs, undo())
		if afterUndoStep != nil {
			afterUndoStep()
		}
	}
	t.undo = nil
	return errors.Join(errs...)
}

// Sysctl is a setting under /proc/sys: Key is its path there
// ("net/ipv4/conf/ulo0/route_localnet"), Value what Apply writes.
type Sysctl struct{ Key, Value string }

// DeviceSysctls lists the settings Apply gives the device dev, in the order
// it writes them (the IPv6 ones only where the kernel has IPv6). They are the
// only sysctls a takeover changes; tests that snapshot host state read the
// same names for all, default and lo, which must stay as they were.
func DeviceSysctls(dev string) []Sysctl {
	out := make([]Sysctl, len(deviceSysctls))
	for i, s := range deviceSysctls {
		out[i] = Sysctl{Key: fmt.Sprintf(s.Key, dev), Value: s.Value}
	}
	return out
}

// deviceSysctls are the settings the TUN needs, keyed by path under
// /proc/sys with %s for the device name (see DeviceSysctls). They are per
// device only.
//
// rp_filter is left alone, on measurement (Linux 6.18, scratch namespace, a
// TUN that writes every packet straight back, ping): with rp_filter=1 or 2 on
// all, on default, on the device, or on all three, ping worked for
// 127.0.0.0/8 and for 127.77.0.0/16 with a source inside it. The
// reverse-path check of a packet from the TUN looks its source up as output traffic (iif lo), which takes our rule and
// resolves to the TUN itself, the device the packet came in on. Only a
// source outside the prefix (127.0.0.1 for a 127.77.0.0/16 takeover) is
// dropped (IPReversePathFilter counts it), whatever the device's own value,
// since the kernel uses max(all, device); Config.Source avoids that case.
var deviceSysctls = []Sysctl{
	// Turn IPv6 off first, before the device goes up: we carry no IPv6 over
	// the TUN (the kernel drops ::1 from non-loopback devices), and an IPv6
	// device sends router solicitations and MLD reports into the stack.
	{"net/ipv6/conf/%s/disable_ipv6", "1"},
	// Without it ip_route_input_slow treats 127/8 on a non-lo device as
	// martian, source or destination.
	{"net/ipv4/conf/%s/route_localnet", "1"},
	// fib_validate_source drops packets from outside whose source is a local
	// address unless accept_local is set or, with policy rules present, the
	// reverse lookup gives a unicast route through the arriving device. Ours
	// does for sources inside the prefix (measured: ping works without it),
	// so this covers sources outside it, e.g. a client bound to 127.0.0.1
	// talking to 127.77.0.0/16.
	{"net/ipv4/conf/%s/accept_local", "1"},
}
