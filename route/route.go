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
	// mu guards undo.
	mu sync.Mutex
	// undo holds one function per change made, in the order made.
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

// Snapshot is the host state uloopd may touch, one line per entry, for tests
// that compare before start and after stop with reflect.DeepEqual.
type Snapshot struct {
	Rules   []string // IPv4 then IPv6 rules, in priority order
	Routes  []string // routes of all tables, IPv4 and IPv6
	Links   []string // "name up" or "name down"
	Sysctls []string // "net/ipv4/conf/all/rp_filter=0", ...
}

func (s Snapshot) sections() [][]string {
	return [][]string{s.Rules, s.Routes, s.Links, s.Sysctls}
}

var sectionNames = []string{"rules", "routes", "links", "sysctls"}

// String lists the snapshot one entry a line, by section.
func (s Snapshot) String() string {
	var b strings.Builder
	for i, sec := range s.sections() {
		fmt.Fprintf(&b, "%s:\n", sectionNames[i])
		for _, l := range sec {
			fmt.Fprintf(&b, "\t%s\n", l)
		}
	}
	return b.String()
}

// Diff describes how o differs from s: lines only in s start with "-", lines
// only in o with "+". It returns "" when the snapshots are equal.
func (s Snapshot) Diff(o Snapshot) string {
	var b strings.Builder
	for i, sec := range s.sections() {
		other := o.sections()[i]
		if slices.Equal(sec, other) {
			continue
		}
		fmt.Fprintf(&b, "%s:\n", sectionNames[i])
		n := b.Len()
		for _, l := range sec {
			if !slices.Contains(other, l) {
				fmt.Fprintf(&b, "\t-%s\n", l)
			}
		}
		for _, l := range other {
			if !slices.Contains(sec, l) {
				fmt.Fprintf(&b, "\t+%s\n", l)
			}
		}
		if b.Len() == n {
			fmt.Fprintf(&b, "\tsame entries, other order or count:\n\t-%s\n\t+%s\n",
				strings.Join(sec, " | "), strings.Join(other, " | "))
		}
	}
	return b.String()
}
