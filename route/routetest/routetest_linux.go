//go:build linux

package routetest

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/uloop/uloop/route/internal/nlutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var routeTypes = map[int]string{
	unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
	unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
	unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit", unix.RTN_THROW: "throw",
}

// Take reads the host state a takeover touches, in the calling thread's
// network namespace.
func Take() (Snapshot, error) {
	var s Snapshot
	links, err := nlutil.Dump(netlink.LinkList)
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
		rules, err := nlutil.Dump(func() ([]netlink.Rule, error) { return netlink.RuleList(fam) })
		if err != nil {
			return s, fmt.Errorf("snapshot: listing rules: %w", err)
		}
		family := "ipv4"
		if fam == netlink.FAMILY_V6 {
			family = "ipv6"
		}
		for _, r := range rules {
			s.Rules = append(s.Rules, fmt.Sprintf("%s %s proto %d", family, nlutil.RuleKey(r), r.Protocol))
		}
	}
	routes, err := nlutil.Dump(func() ([]netlink.Route, error) {
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
	for _, key := range Sysctls() {
		b, err := os.ReadFile("/proc/sys/" + key)
		switch {
		case errors.Is(err, fs.ErrNotExist): // no IPv6 (ipv6.disable=1)
			s.Sysctls = append(s.Sysctls, key+" absent")
		case err != nil:
			return s, fmt.Errorf("snapshot: reading sysctl: %w", err)
		default:
			s.Sysctls = append(s.Sysctls, key+"="+strings.TrimSpace(string(b)))
		}
	}
	return s, nil
}
