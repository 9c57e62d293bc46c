//go:build linux

package integration

import (
	"net"
	"net/netip"
	"testing"

	"github.com/uloop/uloop/route"
)

// TestPrefixSizes: uloopd taking over only part of 127/8 gets ready for a /32, a
// /31 and a /16 (its ready probe works from route.Config.Source, the source
// address of the takeover's route), and TCP to addresses in the prefix
// crosses ulo0 from that source. 127.0.0.2/32 once passed validation and then
// failed its probe, which used an address outside the prefix.
func TestPrefixSizes(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		prefix string
		dsts   []string // addresses in the prefix to connect to
		source string   // the source the kernel picks for them
	}{
		{"127.0.0.2/32", []string{"127.0.0.2"}, "127.0.0.2"},
		{"127.77.1.2/31", []string{"127.77.1.2", "127.77.1.3"}, "127.77.1.2"},
		// The block's last /31: its second address is lo's broadcast.
		{"127.255.255.254/31", []string{"127.255.255.254"}, "127.255.255.254"},
		{"127.77.0.0/16", []string{"127.77.0.1", "127.77.3.4"}, "127.77.0.1"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.prefix)
			if got := (route.Config{Device: tunDev, Prefix: p}).Source().String(); got != tc.source {
				t.Fatalf("route.Config.Source for %s: got %s, want %s", p, got, tc.source)
			}
			e := uloopEnv(t, "--prefix", tc.prefix) // waits for ready
			for _, dst := range tc.dsts {
				l := e.ns.listen(t, "tcp", net.JoinHostPort(dst, "0"))
				tcpEcho(t, l)
				before := e.snapshot(t)
				c := e.ns.mustDial(t, "tcp", l.Addr().String())
				if src := c.LocalAddr().(*net.TCPAddr).IP.String(); src != tc.source {
					t.Errorf("connection to %s: source %s, want %s", dst, src, tc.source)
				}
				c.Close()
				tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), []byte("through "+tc.prefix))
				e.requireCrossed(t, before)
				e.requireGrew(t, before, "uloop_tcp_connections_total", 2)
			}
		})
	}
}
