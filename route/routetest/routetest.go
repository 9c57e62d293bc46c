// Package routetest reads the host state that package route changes, for
// tests that check a takeover gives it all back: route's own tests, and the
// integration tests that run uloopd in a namespace. It is one snapshot for
// both, so what "as it was" means is written once.
package routetest

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/uloop/uloop/route"
)

// Snapshot is the host state a takeover may touch, one line per entry, in an
// order that does not depend on the kernel's hash tables, so two snapshots
// compare with reflect.DeepEqual or Diff.
type Snapshot struct {
	Rules   []string // IPv4 then IPv6 rules, in priority order
	Routes  []string // routes of all tables, IPv4 and IPv6, sorted
	Links   []string // "name up" or "name down"
	Sysctls []string // "net/ipv4/conf/all/route_localnet=0", ...
}

// Sysctls are the settings a snapshot reads: the names route sets on its
// device (route.DeviceSysctls), for all, default and lo, where a takeover
// must change nothing (route_localnet on all is CVE-2020-8558), and
// rp_filter, which route leaves alone on purpose.
func Sysctls() []string {
	var keys []string
	for _, dev := range []string{"all", "default", "lo"} {
		for _, s := range route.DeviceSysctls(dev) {
			keys = append(keys, s.Key)
		}
		keys = append(keys, path.Join("net/ipv4/conf", dev, "rp_filter"))
	}
	return keys
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

// loRoute matches what the kernel adds by itself when lo goes up: routes on
// lo in table local (255) or made by the kernel (proto kernel).
var loRoute = regexp.MustCompile(`\bdev lo\b.*(\btable 255\b|\bproto kernel\b)`)

// WithoutLo drops what bringing lo up changes by itself: lo's own state and
// the kernel's routes on lo. uloopd brings lo up in a fresh namespace and
// cannot know, after a crash, whether it was down before; --cleanup then
// leaves it up.
func (s Snapshot) WithoutLo() Snapshot {
	out := s
	out.Routes = slices.DeleteFunc(slices.Clone(s.Routes), loRoute.MatchString)
	out.Links = slices.DeleteFunc(slices.Clone(s.Links), func(l string) bool { return strings.HasPrefix(l, "lo ") })
	return out
}

// Require fails t, saying what differs, unless got equals want.
func Require(t testing.TB, when string, got, want Snapshot) {
	t.Helper()
	if d := want.Diff(got); d != "" {
		t.Errorf("%s: host state differs (-want +got):\n%s", when, d)
	}
}
