//go:build linux

package integration

import (
	"bytes"
	"net"
	"testing"
)

// TestPathThroughTUN: once uloopd is ready, loopback traffic really goes
// through ulo0 and the daemon (not around it on lo), for 127.0.0.1 and for any
// other 127/8 address.
func TestPathThroughTUN(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		for _, dst := range []string{"127.0.0.1", "127.9.8.7"} {
			t.Run(dst, func(t *testing.T) {
				t.Run("ping", func(t *testing.T) {
					before := e.snapshot(t)
					ping(t, e.ns, dst, "-c", "1", "-W", "2")
					e.requireCrossed(t, before)
					e.requireGrew(t, before, "uloop_tun_rx_packets_total", 1)
					e.requireGrew(t, before, "uloop_icmp_echo_replies_total", 1)
				})
				t.Run("tcp", func(t *testing.T) {
					l := e.ns.listen(t, "tcp", net.JoinHostPort(dst, "0"))
					tcpEcho(t, l)
					before := e.snapshot(t)
					tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), []byte("through the tunnel"))
					e.requireCrossed(t, before)
					// SYN, ACK+data, FIN, ACK at least.
					e.requireGrew(t, before, "uloop_tun_rx_packets_total", 4)
					e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
				})
			})
		}
	})
}

// linkNoise is how many bytes ulo0 may move during the "outside" subtest
// without any of its own traffic crossing it: the closing packets of the
// "inside" subtest's connection can still be on their way when the counters
// are read (measured here: final ACKs, a FIN the server's kernel retransmits
// about 10 ms later, and the RST that answers the stack's ACK to that
// retransmit; under 100 bytes each). Nothing else crosses an idle ulo0:
// route gives it no link-local address (addr_gen_mode 1; disable_ipv6 with
// --ipv6=false) before the link goes up, and it is a NOARP device, so it
// sends no router solicitations, MLD reports or duplicate address detection
// (an idle ulo0 moved no packet in 6 s after ready). A TCP exchange of 1 MiB or a 1000-byte ping that went through ulo0
// would exceed it many times over.
const linkNoise = 4096

// TestPrefix: with --prefix 127.77.0.0/16 only that prefix goes through ulo0;
// the rest of 127/8 stays on lo and still works.
func TestPrefix(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t, "--prefix", "127.77.0.0/16")
		t.Run("inside", func(t *testing.T) {
			l := e.ns.listen(t, "tcp", "127.77.1.1:0")
			tcpEcho(t, l)
			before := e.snapshot(t)
			ping(t, e.ns, "127.77.1.1", "-c", "2", "-W", "2")
			tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), []byte("inside the prefix"))
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_icmp_echo_replies_total", 2)
			e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
		})
		t.Run("outside", func(t *testing.T) {
			l := e.ns.listen(t, "tcp", "127.0.0.1:0")
			tcpEcho(t, l)
			before := e.snapshot(t)
			ping(t, e.ns, "127.0.0.1", "-c", "2", "-W", "2", "-s", "1000")
			tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), bytes.Repeat([]byte("outside"), 150000))
			after := e.snapshot(t)
			route := e.ns.mustRun(t, "ip", "route", "get", "127.0.0.1")
			for _, name := range []string{"uloop_icmp_echo_replies_total", "uloop_tcp_connections_total"} {
				if a, b := metricValue(t, after.m, name), metricValue(t, before.m, name); a != b {
					t.Errorf("%s: got %v, want unchanged %v (127.0.0.1 is outside the prefix; ip route get: %s)", name, a, b, route)
				}
			}
			if d := after.link.TxBytes - before.link.TxBytes; d > linkNoise {
				t.Errorf("%s tx_bytes grew by %d, want <= %d: traffic to 127.0.0.1 crossed the TUN (ip route get: %s)", tunDev, d, linkNoise, route)
			}
			if d := after.link.RxBytes - before.link.RxBytes; d > linkNoise {
				t.Errorf("%s rx_bytes grew by %d, want <= %d: traffic to 127.0.0.1 crossed the TUN (ip route get: %s)", tunDev, d, linkNoise, route)
			}
		})
	})
}
