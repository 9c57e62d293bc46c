//go:build linux

// Package nlutil holds the netlink helpers that package route and its test
// support (route/routetest) share: a dump that survives concurrent changes,
// and the text form of a policy rule.
package nlutil

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
)

// Dump retries a netlink dump that the kernel marked interrupted
// (NLM_F_DUMP_INTR, the list changed meanwhile), so that no decision rests
// on a partial list.
func Dump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 4 {
			return v, err
		}
	}
}

// RuleKey formats a rule the way ip rule shows it, without its protocol.
func RuleKey(r netlink.Rule) string {
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
