//go:build linux

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestUDP: what programs see of UDP over 127/8, on lo and through uloopd.
func TestUDP(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("sizes", func(t *testing.T) { testUDPSizes(t, e) })
		t.Run("refused", func(t *testing.T) { testUDPRefused(t, e) })
		t.Run("flows-1000", func(t *testing.T) { testUDPFlows(t, e, 1000) })
	})
}

// udpSizes: the smallest, a typical MTU-sized, a large and the largest
// datagram IPv4 allows (65535 - 20 - 8).
var udpSizes = []int{1, 1400, 32768, 65507}

// datagram returns size bytes that differ for each (tag, size).
func datagram(tag byte, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7+size) ^ tag
	}
	b[0] = tag
	return b
}

// udpClient is a client socket and how it sends to the server.
type udpClient struct {
	c    *net.UDPConn
	send func([]byte) error
}

func newUDPClient(t *testing.T, ns *netNS, bind string, srv *net.UDPAddr) udpClient {
	t.Helper()
	if bind == "" { // connected socket
		c := dialUDP(t, ns, "udp", srv)
		return udpClient{c, func(b []byte) error { _, err := c.Write(b); return err }}
	}
	c := ns.listenUDP(t, bind)
	return udpClient{c, func(b []byte) error { _, err := c.WriteToUDP(b, srv); return err }}
}

// readDatagram reads one datagram and checks its sender and content.
func readDatagram(t *testing.T, c *net.UDPConn, wantFrom string, want []byte) {
	t.Helper()
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := c.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("read at %s (want %d bytes from %s): %v", c.LocalAddr(), len(want), wantFrom, err)
	}
	if n != len(want) {
		t.Fatalf("datagram at %s: got %d bytes, want %d", c.LocalAddr(), n, len(want))
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("datagram at %s: %d bytes with the wrong content", c.LocalAddr(), n)
	}
	if from.String() != wantFrom {
		t.Errorf("datagram at %s: got source %s, want %s", c.LocalAddr(), from, wantFrom)
	}
}

// readBurst reads len(sizes) datagrams and requires one of each size, each
// intact and from wantFrom: a burst must keep its datagram boundaries.
func readBurst(t *testing.T, c *net.UDPConn, wantFrom string, tag byte) {
	t.Helper()
	pending := map[int]bool{}
	for _, s := range udpSizes {
		pending[s] = true
	}
	buf := make([]byte, 65536)
	for range udpSizes {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("burst at %s: %v; sizes not received: %v", c.LocalAddr(), err, pending)
		}
		if !pending[n] {
			t.Fatalf("burst at %s: got a %d-byte datagram, want one of %v (each once)", c.LocalAddr(), n, pending)
		}
		delete(pending, n)
		if !bytes.Equal(buf[:n], datagram(tag, n)) {
			t.Errorf("burst at %s: %d-byte datagram with the wrong content", c.LocalAddr(), n)
		}
		if from.String() != wantFrom {
			t.Errorf("burst at %s: got source %s, want %s", c.LocalAddr(), from, wantFrom)
		}
	}
}

func testUDPSizes(t *testing.T, e *env) {
	for _, tc := range []struct{ name, server, client string }{
		{"connected-to-127.0.0.1", "127.0.0.1:0", ""},
		{"127.0.0.1-to-127.0.0.1", "127.0.0.1:0", "127.0.0.1:0"},
		{"127.0.0.1-to-127.5.5.5", "127.5.5.5:0", "127.0.0.1:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snapshot(t)
			srv := e.ns.listenUDP(t, tc.server)
			srvAddr := srv.LocalAddr().(*net.UDPAddr)
			cl := newUDPClient(t, e.ns, tc.client, srvAddr)
			clientAddr := cl.c.LocalAddr().String()

			// One at a time, both ways: exact size, content and addresses.
			for _, size := range udpSizes {
				if err := cl.send(datagram('c', size)); err != nil {
					t.Fatalf("send %d bytes: %v", size, err)
				}
				readDatagram(t, srv, clientAddr, datagram('c', size))
				if _, err := srv.WriteToUDP(datagram('s', size), cl.c.LocalAddr().(*net.UDPAddr)); err != nil {
					t.Fatalf("server send %d bytes: %v", size, err)
				}
				readDatagram(t, cl.c, srvAddr.String(), datagram('s', size))
			}

			// Back to back, both ways. The receive buffers are forced large
			// enough that the kernel drops nothing.
			forceRcvBuf(t, srv, 4<<20)
			forceRcvBuf(t, cl.c, 4<<20)
			for _, size := range udpSizes {
				if err := cl.send(datagram('C', size)); err != nil {
					t.Fatalf("send %d bytes: %v", size, err)
				}
			}
			readBurst(t, srv, clientAddr, 'C')
			for _, size := range udpSizes {
				if _, err := srv.WriteToUDP(datagram('S', size), cl.c.LocalAddr().(*net.UDPAddr)); err != nil {
					t.Fatalf("server send %d bytes: %v", size, err)
				}
			}
			readBurst(t, cl.c, srvAddr.String(), 'S')

			e.requireGrew(t, before, "uloop_udp_flows_total", 1)
			e.requireCrossed(t, before)
		})
	}
}

// testUDPRefused: a connected UDP socket learns of the ICMP port unreachable
// its datagram caused: the next read fails with ECONNREFUSED.
func testUDPRefused(t *testing.T, e *env) {
	before := e.snapshot(t)
	c := dialUDP(t, e.ns, "udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if _, err := c.Write([]byte("anyone?")); err != nil {
		t.Fatalf("first write: got %v, want success (the error comes later)", err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.Read(make([]byte, 64))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read after sending to a port with no listener: got %v, want ECONNREFUSED", err)
	}
	e.requireCrossed(t, before)
}

// udpEcho echoes every datagram on srv back to its sender until srv closes.
func udpEcho(t *testing.T, srv *net.UDPConn) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			srv.WriteToUDP(buf[:n], from)
		}
	}()
	t.Cleanup(func() { srv.Close(); wg.Wait() })
}

// testUDPFlows: n client sockets talk to one echo server at once; every one
// gets its own datagram back. The server's receive buffer is forced large
// enough for all n, so on lo nothing is dropped.
func testUDPFlows(t *testing.T, e *env, n int) {
	before := e.snapshot(t)
	srv := e.ns.listenUDP(t, "127.0.0.1:0")
	forceRcvBuf(t, srv, 32<<20)
	udpEcho(t, srv)
	srvAddr := srv.LocalAddr().(*net.UDPAddr)

	clients := make([]*net.UDPConn, 0, n)
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	err := e.ns.do(func() error {
		for range n {
			c, err := net.DialUDP("udp", nil, srvAddr)
			if err != nil {
				return err
			}
			clients = append(clients, c)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("creating %d client sockets (have %d): %v", n, len(clients), err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := []byte(fmt.Sprintf("flow %d from %s", i, c.LocalAddr()))
			if _, err := c.Write(msg); err != nil {
				errs <- fmt.Errorf("%s: write: %w", c.LocalAddr(), err)
				return
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 256)
			m, err := c.Read(buf)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: read: %w", c.LocalAddr(), err)
			case !bytes.Equal(buf[:m], msg):
				errs <- fmt.Errorf("%s: got %q, want %q", c.LocalAddr(), buf[:m], msg)
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	var first error
	for err := range errs {
		if first == nil {
			first = err
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d concurrent UDP flows: %d got no correct echo, want 0; first: %v%s", n, failed, first, e.diagnostics(t))
	}
	e.requireGrew(t, before, "uloop_udp_flows_total", float64(n))
	e.requireCrossed(t, before)
}

// TestUDPFlowExpiry: with --udp-timeout 2s an idle flow is expired (counted,
// and no longer active), and the same client socket can start a new one.
func TestUDPFlowExpiry(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t, "--udp-timeout", "2s")
		srv := e.ns.listenUDP(t, "127.0.0.1:0")
		udpEcho(t, srv)
		c := dialUDP(t, e.ns, "udp", srv.LocalAddr().(*net.UDPAddr))
		echo := func(msg string) {
			t.Helper()
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("echo: got %q, %v; want %q", buf[:n], err, msg)
			}
		}

		before := e.snapshot(t)
		echo("first")
		m := metrics(t, e.ns)
		if got := metricValue(t, m, "uloop_udp_flows_active"); got < 1 {
			t.Errorf("uloop_udp_flows_active right after an exchange: got %v, want >= 1", got)
		}
		expired0 := metricValue(t, before.m, "uloop_udp_flows_expired_total")
		pollUntil(t, 15*time.Second, "the idle flow to expire", func() (bool, string) {
			m := metrics(t, e.ns)
			exp, act := metricValue(t, m, "uloop_udp_flows_expired_total"), metricValue(t, m, "uloop_udp_flows_active")
			return exp > expired0 && act == 0, fmt.Sprintf("uloop_udp_flows_expired_total %v (was %v), uloop_udp_flows_active %v", exp, expired0, act)
		})

		mid := e.snapshot(t)
		echo("second")
		e.requireGrew(t, mid, "uloop_udp_flows_total", 1)
		e.requireCrossed(t, mid)
	})
}
