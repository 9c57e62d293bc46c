//go:build linux

package integration

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/uloop/uloop/control"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// stackDrops names the series of uloop_stack_dropped_packets_total for one
// reason (metric name, label pairs), or all of them for "".
func stackDrops(reason string) []string {
	if reason == "" {
		return []string{"uloop_stack_dropped_packets_total"}
	}
	return []string{"uloop_stack_dropped_packets_total", "reason", reason}
}

// quietFor is how long a test waits to be sure a packet was not delivered:
// on this path a delivered one arrives within a millisecond or two.
const quietFor = 300 * time.Millisecond

// requireNothingRead fails the test if c delivers any byte within quietFor.
func requireNothingRead(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quietFor))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: %s read %q (err %v), want nothing", what, c.LocalAddr(), buf[:n], err)
	}
}

// requireCounted fails the test (not fatally) unless series (as stackDrops
// gives it) grows past its value in before within 5 s: a drop that is not
// counted is invisible to whoever runs the daemon.
func requireCounted(t *testing.T, ns *netNS, before control.Metrics, series []string) {
	t.Helper()
	b := metricValue(t, before, series[0], series[1:]...)
	err := waitFor(5*time.Second, func() (bool, string) {
		a := metricValue(t, metrics(t, ns), series[0], series[1:]...)
		return a > b, fmt.Sprintf("%v: got %v, want > %v", series, a, b)
	})
	if err != nil {
		t.Errorf("%v: the packet was dropped (nothing was delivered) but not counted", err)
	}
}

// injection is an idle TCP connection whose sequence numbers the test reads
// off a raw tap, so that it can send segments into either of uloopd's two
// endpoints of the relayed connection as if from the client or the server.
//
// uloopd terminates the connection in two gVisor endpoints: A faces the
// client and has its own sequence space towards it, B faces the server.
// A segment addressed client -> server reaches A, and must carry sequence
// numbers A expects: its rcv_nxt is the ack of A's last segment to the
// client. Likewise server -> client reaches B.
type injection struct {
	c, s net.Conn // client and the server's accepted end
	tap  *tcpTap
	raw  *rawSender
}

func newInjection(t *testing.T, ns *netNS, raw *rawSender) *injection {
	t.Helper()
	in := &injection{raw: raw}
	in.c, in.s = connPair(t, ns, "127.0.0.1:0", "127.0.0.1")
	in.tap = newTCPTap(t, ns, in.client().Port(), in.server().Port())
	exchange(t, in.c, in.s, []byte("ping"))
	exchange(t, in.s, in.c, []byte("pong"))
	return in
}

func (in *injection) client() netip.AddrPort {
	return netip.MustParseAddrPort(in.c.LocalAddr().String())
}
func (in *injection) server() netip.AddrPort {
	return netip.MustParseAddrPort(in.c.RemoteAddr().String())
}

// toServer builds a segment from the client's address and port to the
// server's, whose sequence number is off bytes past what A expects next.
func (in *injection) toServer(t *testing.T, off uint32, flags header.TCPFlags, payload []byte) tcpSeg {
	t.Helper()
	// A's last segment to the client: its ack is A's rcv_nxt, its seq A's
	// snd_nxt (an acceptable ack).
	a := in.tap.latest(t, in.server(), in.client(), 2*time.Second)
	return tcpSeg{src: in.client(), dst: in.server(), seq: a.ack + off, ack: a.seq, flags: flags, payload: payload}
}

// toClient is toServer the other way: into B, as if from the server.
func (in *injection) toClient(t *testing.T, off uint32, flags header.TCPFlags, payload []byte) tcpSeg {
	t.Helper()
	b := in.tap.latest(t, in.client(), in.server(), 2*time.Second)
	return tcpSeg{src: in.server(), dst: in.client(), seq: b.ack + off, ack: b.seq, flags: flags, payload: payload}
}

// requireAlive requires the connection to still carry bytes both ways.
func (in *injection) requireAlive(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	in.c.SetDeadline(deadline)
	in.s.SetDeadline(deadline)
	exchange(t, in.c, in.s, []byte("still there?"))
	exchange(t, in.s, in.c, []byte("yes"))
}

// proveInjection shows, on connections of its own, that a segment injected
// with the numbers the tap gives is taken as the peer's own data, into A (as
// if from the client) and into B (as if from the server). A case that then
// finds its hostile segment not delivered knows that this is the segment's
// doing, not a flaw of the injection. (The proof spoils its connection: the
// injected bytes move the receiver past what the real peer sent.)
func proveInjection(t *testing.T, ns *netNS, raw *rawSender) {
	t.Helper()
	for _, intoB := range []bool{false, true} {
		in := newInjection(t, ns, raw)
		seg, reader, endpoint := in.toServer(t, 0, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL")), in.s, "A (client side)"
		if intoB {
			seg, reader, endpoint = in.toClient(t, 0, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL")), in.c, "B (server side)"
		}
		raw.send(t, tcpPacket(seg))
		got := make([]byte, 4)
		reader.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(reader, got); err != nil || string(got) != "EVIL" {
			t.Fatalf("injected in-window data into %s: %s read %q (err %v), want \"EVIL\": the injection does not work, so cases that find nothing delivered prove nothing", endpoint, reader.LocalAddr(), got, err)
		}
	}
}

// outsideWindow is as far from the expected sequence number as TCP's 32-bit
// space allows: outside any window, on either side.
const outsideWindow = 1 << 31

// TestCraftedPackets sends malformed and hostile packets from inside the
// namespace with raw sockets to 127.0.0.1, which routes them into uloopd
// like any local packet. Each must be dropped (and, where gVisor has a
// reason for it, counted in uloop_stack_dropped_packets_total), deliver
// nothing to any program, and leave the daemon and a TCP echo connection
// running alongside unharmed.
//
// What raw sockets can send: see rawSender. The kernel recomputes the IP
// header checksum and total length, so those two malformations never reach
// uloopd from a local program (FuzzInbound in stack/ covers them).
func TestCraftedPackets(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		lo := netip.MustParseAddr("127.0.0.1")
		echo := e.ns.listen(t, "tcp", "127.0.0.1:0")
		tcpEcho(t, echo)
		steady := startSteady(t, e.ns, echo.Addr().String())
		steady.requireProgress(t, "before any crafted packet")
		raw := newRawSender(t, e.ns)
		udpSrv := e.ns.listenUDP(t, "127.0.0.1:0")
		udpAddr := netip.MustParseAddrPort(udpSrv.LocalAddr().String())
		// Sources no socket uses: 127.0.0.1 with ports from the reserved
		// range below 1024, which a fresh namespace leaves free; a port of
		// its own for each case, so that no case lands in a flow an
		// earlier one opened.
		spoofed := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(lo, port) }

		// requireNoDatagram: nothing reached the UDP server.
		requireNoDatagram := func(t *testing.T) {
			t.Helper()
			udpSrv.SetReadDeadline(time.Now().Add(quietFor))
			buf := make([]byte, 2048)
			n, from, err := udpSrv.ReadFromUDP(buf)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("UDP server read %q from %v (err %v), want nothing", buf[:n], from, err)
			}
		}
		// newListener returns a listener whose accepts the test watches.
		newListener := func(t *testing.T) (netip.AddrPort, <-chan net.Conn) {
			l := e.ns.listen(t, "tcp", "127.0.0.1:0")
			return netip.MustParseAddrPort(l.Addr().String()), acceptOne(t, l)
		}
		requireNoAccept := func(t *testing.T, accepted <-chan net.Conn) {
			t.Helper()
			select {
			case c := <-accepted:
				if c != nil {
					c.Close()
					t.Errorf("listener accepted %s, want no connection", c.RemoteAddr())
				}
			case <-time.After(quietFor):
			}
		}

		for _, tc := range []struct {
			name string
			// counter must grow by at least 1: a series of
			// uloop_stack_dropped_packets_total, or nil where gVisor keeps
			// no count for the drop (the test then relies on what the
			// programs see, and on the control case).
			counter []string
			run     func(t *testing.T)
		}{
			{"control-in-window-data-is-delivered", nil, func(t *testing.T) {
				// The cases below that inject into B prove this again
				// first: they rely on it.
				proveInjection(t, e.ns, raw)
			}},
			{"tcp-bad-checksum", stackDrops("tcp_checksum"), func(t *testing.T) {
				in := newInjection(t, e.ns, raw)
				raw.send(t, corruptTransportChecksum(tcpPacket(in.toServer(t, 0, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL")))))
				requireNothingRead(t, in.s, "after a segment with a bad checksum")
				in.requireAlive(t)
			}},
			{"tcp-data-offset-beyond-packet", stackDrops("tcp_invalid_segment"), func(t *testing.T) {
				in := newInjection(t, e.ns, raw)
				s := in.toServer(t, 0, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL"))
				s.dataOffset = 60 // a 60-byte header in a 24-byte segment
				raw.send(t, tcpPacket(s))
				requireNothingRead(t, in.s, "after a segment whose header is longer than it")
				in.requireAlive(t)
			}},
			{"tcp-data-outside-window", nil, func(t *testing.T) {
				proveInjection(t, e.ns, raw)
				in := newInjection(t, e.ns, raw)
				raw.send(t, tcpPacket(in.toServer(t, outsideWindow, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL"))))
				raw.send(t, tcpPacket(in.toClient(t, outsideWindow, header.TCPFlagAck|header.TCPFlagPsh, []byte("EVIL"))))
				requireNothingRead(t, in.s, "after data outside the window, client -> server")
				requireNothingRead(t, in.c, "after data outside the window, server -> client")
				in.requireAlive(t)
			}},
			{"tcp-rst-outside-window", nil, func(t *testing.T) {
				proveInjection(t, e.ns, raw)
				// RFC 5961 section 3.2: a RST outside the window is dropped.
				in := newInjection(t, e.ns, raw)
				raw.send(t, tcpPacket(in.toServer(t, outsideWindow, header.TCPFlagRst, nil)))
				raw.send(t, tcpPacket(in.toClient(t, outsideWindow, header.TCPFlagRst, nil)))
				in.requireAlive(t)
			}},
			{"tcp-rst-in-window-not-exact", nil, func(t *testing.T) {
				proveInjection(t, e.ns, raw)
				// RFC 5961 section 3.2: a RST inside the window that is not
				// exactly rcv_nxt gets a challenge ACK, not a reset.
				in := newInjection(t, e.ns, raw)
				raw.send(t, tcpPacket(in.toServer(t, 1000, header.TCPFlagRst, nil)))
				raw.send(t, tcpPacket(in.toClient(t, 1000, header.TCPFlagRst, nil)))
				in.requireAlive(t)
			}},
			{"tcp-syn-on-established", nil, func(t *testing.T) {
				proveInjection(t, e.ns, raw)
				// RFC 5961 section 4: a SYN on an established connection
				// gets a challenge ACK.
				in := newInjection(t, e.ns, raw)
				raw.send(t, tcpPacket(in.toServer(t, outsideWindow, header.TCPFlagSyn, nil)))
				raw.send(t, tcpPacket(in.toClient(t, outsideWindow, header.TCPFlagSyn, nil)))
				in.requireAlive(t)
			}},
			{"tcp-syn-bad-checksum", stackDrops(""), func(t *testing.T) {
				// A new connection, not an existing one: gVisor's TCP
				// forwarder sees it first.
				dst, accepted := newListener(t)
				raw.send(t, corruptTransportChecksum(tcpPacket(tcpSeg{src: spoofed(991), dst: dst, seq: 1, flags: header.TCPFlagSyn})))
				requireNoAccept(t, accepted)
			}},
			{"tcp-syn-data-offset-beyond-packet", stackDrops(""), func(t *testing.T) {
				dst, accepted := newListener(t)
				raw.send(t, tcpPacket(tcpSeg{src: spoofed(992), dst: dst, seq: 1, flags: header.TCPFlagSyn, dataOffset: 60}))
				requireNoAccept(t, accepted)
			}},
			{"udp-bad-checksum", stackDrops("udp_checksum"), func(t *testing.T) {
				seg := udpSegment(spoofed(993), udpAddr, []byte("EVIL"))
				raw.send(t, corruptTransportChecksum(ipPacket(ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber}, seg)))
				requireNoDatagram(t)
			}},
			{"udp-length-beyond-packet", stackDrops("udp_malformed"), func(t *testing.T) {
				seg := udpSegment(spoofed(994), udpAddr, []byte("EVIL"))
				header.UDP(seg).SetLength(200) // 12 bytes are there
				transportChecksum(header.UDPProtocolNumber, lo, lo, seg)
				raw.send(t, ipPacket(ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber}, seg))
				requireNoDatagram(t)
			}},
			{"ip-fragments-overlapping", stackDrops("ip_malformed"), func(t *testing.T) {
				// One UDP datagram (8-byte header, 24 bytes of data) in two
				// fragments that overlap in bytes 8..15. Linux's own
				// reassembly drops such a datagram whole (RFC 5722 for
				// IPv6, and inet_frag_queue_insert for IPv4).
				seg := udpSegment(spoofed(995), udpAddr, []byte("EVIL-EVIL-EVIL-EVIL-EVIL"))
				h := ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber, id: 0x5eed}
				first, second := h, h
				first.more = true
				second.offset = 8
				raw.send(t, ipPacket(first, seg[:16]))
				raw.send(t, ipPacket(second, seg[8:]))
				requireNoDatagram(t)
			}},
			{"ip-option-malformed", stackDrops("ip_malformed"), func(t *testing.T) {
				// A timestamp option (type 68) claiming 40 bytes in a
				// 4-byte option area.
				seg := udpSegment(spoofed(996), udpAddr, []byte("EVIL"))
				h := ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber, options: []byte{68, 40, 5, 0}}
				raw.send(t, ipPacket(h, seg))
				requireNoDatagram(t)
			}},
			{"ip-source-multicast", stackDrops("ip_invalid_address"), func(t *testing.T) {
				// The kernel routes a raw packet by its destination and
				// sends a multicast source as it is.
				src := netip.MustParseAddr("224.0.0.1")
				seg := udpSegment(netip.AddrPortFrom(src, 997), udpAddr, []byte("EVIL"))
				raw.send(t, ipPacket(ipHeader{src: src, dst: lo, proto: header.UDPProtocolNumber}, seg))
				requireNoDatagram(t)
			}},
			{"icmp-echo-bad-checksum", stackDrops("icmp_invalid"), func(t *testing.T) {
				pkt := echoPacket(lo, lo, 0x5eed, 1, []byte("EVIL"))
				pkt[header.IPv4MinimumSize+2] ^= 0x5a // ICMP checksum
				raw.send(t, pkt)
			}},
			{"syn-flood-3000", nil, func(t *testing.T) { testSYNFlood(t, e, raw, echo.Addr().String(), 3000) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := metrics(t, e.ns)
				tc.run(t)
				if tc.counter != nil {
					requireCounted(t, e.ns, before, tc.counter)
				}
				e.d.requireRunning(t)
				steady.requireProgress(t, "after "+tc.name)
			})
		}

		// Afterwards: the daemon still relays new connections, and the
		// steady one is intact.
		e.d.requireRunning(t)
		tcpRoundTrip(t, e.ns, "tcp", echo.Addr().String(), []byte("after the crafted packets"))
		steady.requireProgress(t, "after all crafted packets")
	})
}

// testSYNFlood sends n SYNs from random 127/8 addresses and ports to addr
// (a listener). For each one uloopd admits (gVisor's forwarder keeps at most
// 1024 connects in flight and drops the rest, counted as tcp_syn_backlog) it
// dials the listener from the spoofed address, then answers the spoofed
// client, which the kernel resets since no socket there sent the SYN. What
// must hold: every SYN reached the daemon, it lives, and once the flood is
// over no relayed flow and no goroutine of it is left.
func testSYNFlood(t *testing.T, e *env, raw *rawSender, addr string, n int) {
	dst := netip.MustParseAddrPort(addr)
	before := metrics(t, e.ns)
	start := time.Now()
	for range n {
		// 127.1.0.1 - 127.254.255.254: never 127.0.0.1 (the steady
		// connection's address).
		src := netip.AddrFrom4([4]byte{127, byte(1 + rand.N(254)), byte(rand.N(256)), byte(1 + rand.N(254))})
		raw.send(t, tcpPacket(tcpSeg{
			src:   netip.AddrPortFrom(src, uint16(1024+rand.N(64000))),
			dst:   dst,
			seq:   rand.Uint32(),
			flags: header.TCPFlagSyn,
		}))
	}
	t.Logf("%d SYNs sent in %v", n, time.Since(start).Round(time.Millisecond))
	rx0 := metricValue(t, before, "uloop_tun_rx_packets_total")
	pollUntil(t, 10*time.Second, "uloopd to read the flood", func() (bool, string) {
		rx := metricValue(t, metrics(t, e.ns), "uloop_tun_rx_packets_total")
		return rx-rx0 >= float64(n), fmt.Sprintf("uloop_tun_rx_packets_total +%v, want +%d", rx-rx0, n)
	})
	// A connect the listener never answered would hold its goroutine for
	// uloopd's dial timeout (20 s); none should.
	active0 := metricValue(t, before, "uloop_tcp_connections_active")
	g0 := metricValue(t, before, "go_goroutines")
	pollUntil(t, 25*time.Second, "the flood's flows and goroutines to end", func() (bool, string) {
		m := metrics(t, e.ns)
		a, g := metricValue(t, m, "uloop_tcp_connections_active"), metricValue(t, m, "go_goroutines")
		return a <= active0 && g <= g0+goroutineSlack, fmt.Sprintf("uloop_tcp_connections_active %v (before: %v), go_goroutines %v (before: %v)", a, active0, g, g0)
	})
	after := metrics(t, e.ns)
	delta := func(series ...string) float64 {
		return metricValue(t, after, series[0], series[1:]...) - metricValue(t, before, series[0], series[1:]...)
	}
	relayed, refused, rejected := delta("uloop_tcp_connections_total"), delta("uloop_tcp_refused_total"), delta("uloop_flows_rejected_total")
	backlog := delta(stackDrops("tcp_syn_backlog")...)
	t.Logf("flood over after %v: relayed +%v, refused +%v, rejected +%v, tcp_syn_backlog +%v",
		time.Since(start).Round(time.Millisecond), relayed, refused, rejected, backlog)
	// The kernel resets the SYN-ACK sent to a spoofed address (no socket
	// there asked for it), so no SYN of the flood becomes a connection.
	if relayed != 0 {
		t.Errorf("uloop_tcp_connections_total grew by %v during the flood, want 0: spoofed SYNs became relayed connections", relayed)
	}
	// 1,024 connects in flight are far from --max-flows (16,384).
	if rejected != 0 {
		t.Errorf("uloop_flows_rejected_total grew by %v, want 0", rejected)
	}
	// The forwarder drops a SYN only while maxInFlight connects are in
	// flight, so at least that many reached the relay; the flood outruns
	// the relay, so some were dropped, and counted.
	if backlog < 1 || backlog > float64(n-maxInFlight) {
		t.Errorf("tcp_syn_backlog drops: got %v, want between 1 and %d (%d SYNs, %d connects in flight at most)", backlog, n-maxInFlight, n, maxInFlight)
	}
	if refused > float64(n)-backlog {
		t.Errorf("uloop_tcp_refused_total grew by %v, more than the %v SYNs the forwarder took", refused, float64(n)-backlog)
	}
}

// maxInFlight is how many TCP connects uloopd dials at once
// (stack.DefaultMaxInFlight; docs/reliability.md promises it).
const maxInFlight = 1024
