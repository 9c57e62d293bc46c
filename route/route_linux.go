package route

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/uloop/uloop/route/internal/nlutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Apply sends locally generated traffic to c.Prefix through c.Device: it
// turns IPv6 off and route_localnet and accept_local on for the device,
// brings the device up, brings lo up if down, adds the route and the rule,
// and moves the local rule after ours. At no point is 127.0.0.0/8
// undeliverable (once lo is up): the local rule is added at its new place
// before the old one at priority 0 goes, and removing that switches traffic
// to the TUN at once.
//
// Changes already in place are not made again and so not undone by Undo;
// after a daemon was killed, call Cleanup first. On error Apply undoes what
// it did and returns the error joined with any undo errors.
func Apply(c Config) (*Takeover, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("taking over loopback: %w", err)
	}
	c = c.withDefaults()
	t := &Takeover{}
	if err := t.apply(c); err != nil {
		return nil, fmt.Errorf("taking over %v through %s: %w", c.Prefix, c.Device, errors.Join(err, t.Undo()))
	}
	return t, nil
}

func (t *Takeover) apply(c Config) error {
	dev, err := netlink.LinkByName(c.Device)
	if err != nil {
		return fmt.Errorf("finding device %s: %w", c.Device, err)
	}
	// route_localnet on a real interface would let neighbours reach
	// 127.0.0.1 services (CVE-2020-8558).
	if dev.Type() != "tuntap" {
		return fmt.Errorf("device %s is a %s device, want tun", c.Device, dev.Type())
	}
	type step func() (undo func() error, err error)
	var steps []step
	for _, s := range DeviceSysctls(c.Device) {
		if strings.HasPrefix(s.Key, "net/ipv6/") && !ipv6Enabled() {
			continue
		}
		steps = append(steps, func() (func() error, error) { return setSysctl(s.Key, s.Value) })
	}
	steps = append(steps,
		// Before the route: the kernel refuses a route through a device
		// that is down (ENETDOWN), and a preferred source that is not a
		// local address, which 127/8 is only while lo is up.
		func() (func() error, error) { return linkUp(dev.Attrs().Name) },
		upLoopback,
		func() (func() error, error) { return addRoute(c.route(dev.Attrs().Index)) },
		func() (func() error, error) { return addRule(localRule(c.Priority + 1)) },
		func() (func() error, error) { return addRule(c.rule()) },
		func() (func() error, error) { return delRule(localRule(0)) },
	)
	for i, s := range steps {
		undo, err := s()
		if undo != nil {
			t.undo = append(t.undo, undo)
		}
		if err == nil && afterStep != nil {
			err = afterStep(i + 1)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Cleanup removes what a killed daemon left with this config: the routing
// (see CleanupRouting) and the TUN device c.Device if it still exists. It
// does not know whether lo was down before, so leaves lo as it is. With
// nothing to clean it returns nil.
func Cleanup(c Config) error {
	err := CleanupRouting(c)
	if err == nil {
		err = delTUN(c.Device)
	}
	if err != nil {
		return fmt.Errorf("cleaning up %v through %s: %w", c.Prefix, c.Device, err)
	}
	return nil
}

// HandBack gives c.Prefix back to the kernel's lo while the data path is
// still in place: it deletes the takeover's rule, so that lookups fall
// through to the local rule Apply moved to c.Priority+1. It is what a
// watchdog does when the data path stops answering; 127/8 is deliverable
// throughout. Undo and Cleanup still work afterwards (deleting a rule that
// is gone is a no-op). Idempotent.
// Equivalent to: ip rule del pref 1 iif lo to 127.0.0.0/8 lookup 127
func HandBack(c Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("handing loopback back: %w", err)
	}
	c = c.withDefaults()
	if _, err := delRule(c.rule()); err != nil {
		return fmt.Errorf("handing %v back to lo: %w", c.Prefix, err)
	}
	return nil
}

// CleanupRouting removes the routing a killed daemon left with this config,
// leaving devices alone: it puts "0: from all lookup local" back if no IPv4
// rule other than the moved one looks up the local table, then deletes our
// rules (c.Priority, c.Table), the routes in c.Table and the moved local
// rule at c.Priority+1. uloopd runs it at start, once it holds the
// namespace's lock, so that Apply does not mistake leftovers for the
// namespace's own state (and Undo then keep them). Idempotent.
func CleanupRouting(c Config) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("cleaning up loopback takeover: %w", err)
	}
	c = c.withDefaults()
	var errs []error
	keep := func(_ func() error, err error) { errs = append(errs, err) }

	rules, err := nlutil.Dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("cleaning up %v through %s: listing rules: %w", c.Prefix, c.Device, err)
	}
	// First, so that 127/8 stays deliverable while the rest goes.
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool {
		return r.Table == unix.RT_TABLE_LOCAL && r.Priority != c.Priority+1
	}) {
		keep(addRule(localRule(0)))
	}
	for _, r := range rules {
		if r.Priority == c.Priority && r.Table == c.Table {
			keep(delRule(&r))
		}
	}
	routes, err := nlutil.Dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: c.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("listing routes of table %d: %w", c.Table, err))
	}
	for _, r := range routes {
		keep(delRoute(&r))
	}
	keep(delRule(localRule(c.Priority + 1)))
	return errors.Join(errs...)
}

func ipv6Enabled() bool {
	_, err := os.Stat("/proc/sys/net/ipv6") // absent with ipv6.disable=1
	return err == nil
}

func isNotFound(err error) bool {
	return errors.As(err, &netlink.LinkNotFoundError{})
}

// linkUp is idempotent; its undo ignores a device that has gone.
// Equivalent to: ip link set dev <name> up
func linkUp(name string) (undo func() error, err error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil, nil
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	return func() error { return linkDown(name) }, nil
}

// Equivalent to: ip link set dev <name> down
func linkDown(name string) error {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) || (err == nil && l.Attrs().Flags&net.FlagUp == 0) {
		return nil
	}
	if err == nil {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("bringing %s down: %w", name, err)
	}
	return nil
}

// upLoopback brings lo up; its undo puts lo back down and, if lo had no IPv4
// address before, deletes 127.0.0.1/8. The kernel adds that address (and
// with it "local 127.0.0.0/8" and "local 127.0.0.1") each time lo goes up
// (inetdev_event, NETDEV_UP) but keeps all three when lo goes down again, so
// a namespace whose lo was never up would otherwise not get its state back.
// Equivalent to: ip link set dev lo up
// Undo equivalent to: ip link set dev lo down; ip addr del 127.0.0.1/8 dev lo
func upLoopback() (undo func() error, err error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("bringing lo up: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil, nil
	}
	addrs, err := nlutil.Dump(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("listing addresses of lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("bringing lo up: %w", err)
	}
	return func() error {
		if err := linkDown("lo"); err != nil || len(addrs) > 0 {
			return err
		}
		now, err := nlutil.Dump(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_V4) })
		if err != nil {
			return fmt.Errorf("listing addresses of lo: %w", err)
		}
		for _, a := range now {
			if !a.IP.Equal(net.IPv4(127, 0, 0, 1)) {
				continue
			}
			if err := netlink.AddrDel(lo, &a); err != nil {
				return fmt.Errorf("deleting %v from lo: %w", a.IPNet, err)
			}
		}
		return nil
	}, nil
}

// route is "<prefix> dev <tun> scope link src <source> table <table>".
func (c Config) route(linkIndex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       &net.IPNet{IP: c.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(c.Prefix.Bits(), 32)},
		Src:       c.Source().AsSlice(),
		Scope:     netlink.SCOPE_LINK,
		Table:     c.Table,
	}
}

func findRoute(r *netlink.Route) (*netlink.Route, error) {
	routes, err := nlutil.Dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes of table %d: %w", r.Table, err)
	}
	for _, have := range routes {
		if have.LinkIndex == r.LinkIndex && have.Dst.String() == r.Dst.String() {
			return &have, nil
		}
	}
	return nil, nil
}

// addRoute is idempotent. It fails with EEXIST if the table has a route to
// the same prefix through another device.
// Equivalent to: ip route add 127.0.0.0/8 dev ulo0 src 127.0.0.1 table 127
func addRoute(r *netlink.Route) (undo func() error, err error) {
	if have, err := findRoute(r); have != nil || err != nil {
		return nil, err
	}
	if err := netlink.RouteAdd(r); err != nil {
		return nil, fmt.Errorf("adding route %v dev index %d table %d: %w", r.Dst, r.LinkIndex, r.Table, err)
	}
	return func() error { _, err := delRoute(r); return err }, nil
}

// delRoute is idempotent: a route that went with its device counts as
// deleted. Equivalent to: ip route del 127.0.0.0/8 dev ulo0 table 127
func delRoute(r *netlink.Route) (undo func() error, err error) {
	have, err := findRoute(r)
	if have == nil || err != nil {
		return nil, err
	}
	if err := netlink.RouteDel(have); err != nil {
		return nil, fmt.Errorf("deleting route %v dev index %d table %d: %w", r.Dst, r.LinkIndex, r.Table, err)
	}
	return func() error { _, err := addRoute(have); return err }, nil
}

// rule is "iif lo to <prefix> lookup <table> pref <priority>".
func (c Config) rule() *netlink.Rule {
	r := netlink.NewRule() // not Rule{}: its zero Goto would make a goto rule
	r.Priority = c.Priority
	r.Table = c.Table
	r.IifName = "lo"
	r.Dst = &net.IPNet{IP: c.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(c.Prefix.Bits(), 32)}
	return r
}

// localRule is "from all lookup local pref <priority>". At priority 0 it
// carries proto kernel, as the kernel's own rule does, so that putting it
// back restores exactly what was there.
func localRule(priority int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = priority
	r.Table = unix.RT_TABLE_LOCAL
	if priority == 0 {
		r.Protocol = unix.RTPROT_KERNEL
	}
	return r
}

// findRule returns the IPv4 rule with the same selectors, table and
// priority as r, whatever its protocol.
func findRule(r *netlink.Rule) (*netlink.Rule, error) {
	rules, err := nlutil.Dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	for _, have := range rules {
		if nlutil.RuleKey(have) == nlutil.RuleKey(*r) {
			return &have, nil
		}
	}
	return nil, nil
}

// addRule is idempotent. Equivalent to:
// ip rule add iif lo to 127.0.0.0/8 lookup 127 pref 1
func addRule(r *netlink.Rule) (undo func() error, err error) {
	if have, err := findRule(r); have != nil || err != nil {
		return nil, err
	}
	if err := netlink.RuleAdd(r); err != nil {
		return nil, fmt.Errorf("adding rule %s: %w", nlutil.RuleKey(*r), err)
	}
	return func() error { _, err := delRule(r); return err }, nil
}

// delRule is idempotent; its undo adds back the rule as it was read.
// Equivalent to: ip rule del from all lookup local pref 0
func delRule(r *netlink.Rule) (undo func() error, err error) {
	have, err := findRule(r)
	if have == nil || err != nil {
		return nil, err
	}
	if err := netlink.RuleDel(have); err != nil {
		return nil, fmt.Errorf("deleting rule %s: %w", nlutil.RuleKey(*r), err)
	}
	return func() error { _, err := addRule(have); return err }, nil
}

// delTUN deletes the device if it exists and is a TUN/TAP device, so that a
// wrong Config cannot remove a real interface.
// Equivalent to: ip link del dev ulo0
func delTUN(name string) error {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err == nil && l.Type() != "tuntap" {
		err = fmt.Errorf("it is a %s device, want tun", l.Type())
	}
	if err == nil {
		err = netlink.LinkDel(l)
	}
	if err != nil {
		return fmt.Errorf("deleting device %s: %w", name, err)
	}
	return nil
}
