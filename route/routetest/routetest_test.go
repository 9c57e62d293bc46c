package routetest

import (
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	a := Snapshot{Rules: []string{"r0", "r1"}, Links: []string{"lo down"}}
	if d := a.Diff(a); d != "" {
		t.Errorf("Diff of equal snapshots: got %q, want \"\"", d)
	}
	b := Snapshot{Rules: []string{"r1", "r0"}, Links: []string{"lo up"}}
	d := a.Diff(b)
	for _, want := range []string{"-lo down", "+lo up", "other order"} {
		if !strings.Contains(d, want) {
			t.Errorf("Diff: got %q, want it to contain %q", d, want)
		}
	}
}

func TestWithoutLo(t *testing.T) {
	up := Snapshot{
		Routes: []string{
			"local 127.0.0.0/8 dev lo table 255 proto kernel scope host src 127.0.0.1",
			"unicast ::1 dev lo table 254 proto kernel scope universe metric 256",
			"unicast 127.0.0.0/8 dev ulo0 table 127 proto boot scope link src 127.0.0.1",
		},
		Links: []string{"lo up", "ulo0 up"},
	}
	down := Snapshot{
		Routes: []string{"unicast 127.0.0.0/8 dev ulo0 table 127 proto boot scope link src 127.0.0.1"},
		Links:  []string{"lo down", "ulo0 up"},
	}
	if d := down.WithoutLo().Diff(up.WithoutLo()); d != "" {
		t.Errorf("lo up and down, without lo: differ:\n%s", d)
	}
	if up.WithoutLo().Diff(up) == "" || len(up.Routes) != 3 {
		t.Errorf("WithoutLo changed nothing, or changed its receiver: %v", up)
	}
}

func TestSysctls(t *testing.T) {
	keys := strings.Join(Sysctls(), " ")
	for _, want := range []string{"net/ipv4/conf/all/route_localnet", "net/ipv4/conf/lo/accept_local", "net/ipv4/conf/default/rp_filter", "net/ipv6/conf/all/disable_ipv6"} {
		if !strings.Contains(keys, want) {
			t.Errorf("Sysctls: %s missing from %s", want, keys)
		}
	}
}
