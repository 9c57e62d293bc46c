//go:build linux

package integration

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`)

// ping runs ping(8) in ns with args and requires every echo request answered,
// each reply coming from dst. It returns the number of replies.
func ping(t *testing.T, ns *netNS, dst string, args ...string) int {
	t.Helper()
	argv := append(append([]string{"ping"}, args...), dst)
	r := ns.run(t, argv...)
	m := pingSummaryRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no ping summary:\n%s", r)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	if r.code != 0 || sent == 0 || got != sent {
		t.Fatalf("%q: got %d of %d replies (exit %d), want all\n%s", argv, got, sent, r.code, r)
	}
	if !strings.Contains(r.stdout, "from "+dst+":") {
		t.Errorf("%q: replies not from %s:\n%s", argv, dst, r.stdout)
	}
	return got
}

// TestICMP: echo requests to any 127/8 address are answered, also at the
// largest size a 64 KiB IPv4 packet allows without fragments on a 65535 MTU.
func TestICMP(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name string
			dst  string
			args []string
		}{
			{"127.0.0.1", "127.0.0.1", []string{"-c", "3", "-W", "2"}},
			{"127.9.8.7", "127.9.8.7", []string{"-c", "3", "-W", "2"}},
			{"size-65000", "127.0.0.1", []string{"-c", "2", "-W", "2", "-s", "65000"}},
			{"flood-100", "127.3.3.3", []string{"-c", "100", "-i", "0", "-W", "2"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := e.snapshot(t)
				n := ping(t, e.ns, tc.dst, tc.args...)
				e.requireGrew(t, before, "uloop_icmp_echo_replies_total", float64(n))
				e.requireCrossed(t, before)
			})
		}
	})
}
