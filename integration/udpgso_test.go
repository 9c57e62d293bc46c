//go:build linux

package integration

import (
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// TestUDPGSOIntact: a burst of datagrams through uloopd, which writes a
// flow's datagrams to ulo0 as UDP GSO packets and lets the kernel split
// them (stack.udpGSO), reaches the server datagram by datagram: each one
// as long as it was sent, with the bytes it was sent with. Rounds of 200
// full datagrams and a short one, so that whole GSO packets and the short
// last datagram are both carried. The test fails if no datagram went
// through a GSO packet (the metric), as it would then check nothing. Over
// 127.0.0.1 and over ::1 (the socket hooks' path, IPv6 GSO packets).
func TestUDPGSOIntact(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		t.Run("127.0.0.1", func(t *testing.T) {
			srv := e.ns.listenUDPNet(t, "udp4", "127.0.0.1:0")
			testUDPGSOIntact(t, e, srv, "udp4", srv.LocalAddr().(*net.UDPAddr))
		})
		t.Run("::1", func(t *testing.T) {
			srv := e.ns.listenUDPNet(t, "udp6", "[::]:0")
			testUDPGSOIntact(t, e, srv, "udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: portOf(srv.LocalAddr())})
		})
	})
}

// testUDPGSOIntact sends the rounds from a socket dialled to `to` and checks
// every datagram srv receives.
func testUDPGSOIntact(t *testing.T, e *env, srv *net.UDPConn, network string, to *net.UDPAddr) {
	forceRcvBuf(t, srv, 64<<20)
	c := dialUDP(t, e.ns, network, to)
	before := e.snapshot(t)

	const rounds, perRound, full, short = 20, 200, 1200, 300
	// fill writes datagram seq: its number, then bytes derived from it.
	fill := func(b []byte, seq uint32) {
		binary.BigEndian.PutUint32(b, seq)
		for i := 4; i < len(b); i++ {
			b[i] = byte(seq) + byte(i)
		}
	}
	sizes := map[uint32]int{}
	buf := make([]byte, full)
	seq := uint32(0)
	for range rounds {
		for i := 0; i <= perRound; i++ {
			n := full
			if i == perRound {
				n = short
			}
			fill(buf[:n], seq)
			if _, err := c.Write(buf[:n]); err != nil {
				t.Fatal(err)
			}
			sizes[seq] = n
			seq++
		}
		time.Sleep(5 * time.Millisecond)
	}

	got := map[uint32]bool{}
	want := make([]byte, full)
	rb := make([]byte, 2*full)
	srv.SetReadDeadline(time.Now().Add(3 * time.Second))
	for len(got) < len(sizes) {
		n, err := srv.Read(rb)
		if err != nil {
			break // timed out: what was lost is counted below
		}
		if n < 4 {
			t.Fatalf("a %d-byte datagram", n)
		}
		s := binary.BigEndian.Uint32(rb)
		size, ok := sizes[s]
		switch {
		case !ok:
			t.Fatalf("datagram %d: never sent", s)
		case got[s]:
			t.Fatalf("datagram %d: twice", s)
		case n != size:
			t.Fatalf("datagram %d: %d bytes, sent %d", s, n, size)
		}
		fill(want[:n], s)
		if string(rb[:n]) != string(want[:n]) {
			t.Fatalf("datagram %d: bytes differ from those sent", s)
		}
		got[s] = true
	}
	// Loss is allowed (a burst may overflow a queue), corruption not;
	// but most must arrive for the check to mean something.
	if len(got) < len(sizes)*9/10 {
		t.Fatalf("%d of %d datagrams arrived", len(got), len(sizes))
	}
	t.Logf("%d of %d datagrams arrived intact", len(got), len(sizes))
	e.requireGrew(t, before, "uloop_tun_tx_udp_gso_datagrams_total", 2)
}
