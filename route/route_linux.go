package route

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

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
	for _, s := range deviceSysctls {
		key := fmt.Sprintf(s.key, c.Device)
		if strings.HasPrefix(key, "net/ipv6/") && !ipv6Enabled() {
			continue
		}
		steps = append(steps, func() (func() error, error) { return setSysctl(key, s.val) })
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

	rules, err := dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_V4) })
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
	routes, err := dump(func() ([]netlink.Route, error) {
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

// dump retries a netlink dump that the kernel marked interrupted
// (NLM_F_DUMP_INTR, the list changed meanwhile), so that no decision rests
// on a partial list.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 4 {
			return v, err
		}
	}
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
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_V4) })
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
		now, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_V4) })
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
	routes, err := dump(func() ([]netlink.Route, error) {
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
	rules, err := dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("listing rules: %w", err)
	}
	for _, have := range rules {
		if ruleKey(have) == ruleKey(*r) {
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
		return nil, fmt.Errorf("adding rule %s: %w", ruleKey(*r), err)
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
		return nil, fmt.Errorf("deleting rule %s: %w", ruleKey(*r), err)
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

// ruleKey formats a rule the way ip rule shows it, without its protocol.
func ruleKey(r netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if r.Invert {
		b.WriteString(" not")
	}
	from, to := "all", ""
	if r.Src != nil {
		from = r.Src.String()
	}
	if r.Dst != nil {
		to = " to " + r.Dst.String()
	}
	fmt.Fprintf(&b, " from %s%s", from, to)
	if r.Tos != 0 {
		fmt.Fprintf(&b, " tos %#x", r.Tos)
	}
	if r.Mark != 0 || r.Mask != nil {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
		if r.Mask != nil {
			fmt.Fprintf(&b, "/%#x", *r.Mask)
		}
	}
	if r.IifName != "" {
		fmt.Fprintf(&b, " iif %s", r.IifName)
	}
	if r.OifName != "" {
		fmt.Fprintf(&b, " oif %s", r.OifName)
	}
	if r.IPProto != 0 {
		fmt.Fprintf(&b, " ipproto %d", r.IPProto)
	}
	if r.Sport != nil {
		fmt.Fprintf(&b, " sport %d-%d", r.Sport.Start, r.Sport.End)
	}
	if r.Dport != nil {
		fmt.Fprintf(&b, " dport %d-%d", r.Dport.Start, r.Dport.End)
	}
	if r.UIDRange != nil {
		fmt.Fprintf(&b, " uidrange %d-%d", r.UIDRange.Start, r.UIDRange.End)
	}
	if r.Goto >= 0 {
		fmt.Fprintf(&b, " goto %d", r.Goto)
	} else {
		fmt.Fprintf(&b, " lookup %d", r.Table)
	}
	if r.SuppressPrefixlen >= 0 {
		fmt.Fprintf(&b, " suppress_prefixlength %d", r.SuppressPrefixlen)
	}
	return b.String()
}

var routeTypes = map[int]string{
	unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
	unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
	unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw",
}

// TakeSnapshot reads the host state a takeover touches, in the calling
// thread's network namespace.
func TakeSnapshot() (Snapshot, error) {
	var s Snapshot
	links, err := dump(netlink.LinkList)
	if err != nil {
		return s, fmt.Errorf("snapshot: listing links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		state := "down"
		if a.Flags&net.FlagUp != 0 {
			state = "up"
		}
		s.Links = append(s.Links, a.Name+" "+state)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := dump(func() ([]netlink.Rule, error) { return netlink.RuleList(fam) })
		if err != nil {
			return s, fmt.Errorf("snapshot: listing rules: %w", err)
		}
		family := "ipv4"
		if fam == netlink.FAMILY_V6 {
			family = "ipv6"
		}
		for _, r := range rules {
			s.Rules = append(s.Rules, fmt.Sprintf("%s %s proto %d", family, ruleKey(r), r.Protocol))
		}
	}
	routes, err := dump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return s, fmt.Errorf("snapshot: listing routes: %w", err)
	}
	for _, r := range routes {
		dst := "default"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		line := fmt.Sprintf("%s %s dev %s table %d proto %s scope %s", routeTypes[r.Type], dst, names[r.LinkIndex], r.Table, r.Protocol, r.Scope)
		if r.Src != nil {
			line += " src " + r.Src.String()
		}
		if r.Gw != nil {
			line += " via " + r.Gw.String()
		}
		if r.Priority != 0 {
			line += fmt.Sprintf(" metric %d", r.Priority)
		}
		if f := r.ListFlags(); len(f) > 0 {
			line += " " + strings.Join(f, ",")
		}
		s.Routes = append(s.Routes, line)
	}
	slices.Sort(s.Routes) // dump order follows the kernel's table hash
	for _, key := range snapshotSysctls {
		v, err := readSysctl(key)
		if err != nil {
			return s, fmt.Errorf("snapshot: %w", err)
		}
		s.Sysctls = append(s.Sysctls, key+"="+v)
	}
	return s, nil
}
