//go:build linux

package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loopback6 is ::1 with port, for dialing.
func loopback6(port int) string { return net.JoinHostPort("::1", strconv.Itoa(port)) }

// requireLoopback6 fails the test unless addr (a socket's address as a
// program reads it) is ::1.
func requireLoopback6(t *testing.T, what string, addr net.Addr) {
	t.Helper()
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	if !ip.Equal(net.IPv6loopback) {
		t.Errorf("%s: got %v, want ::1 (as on lo)", what, addr)
	}
}

// TestIPv6: ::1 through uloop. TCP and UDP to a server on [::] cross ulo0
// and the stack, and both programs see ::1 wherever lo shows it; refused
// ports, half-close and reset behave as on lo; UDP datagrams up to the
// largest IPv6 one without jumbograms arrive whole. TCP listeners bound to
// exactly [::1] are reached too; MPTCP listeners and UDP sockets bound
// there, and ping -6 ::1, still work, through lo (docs/semantics.md).
func TestIPv6(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("tcp", func(t *testing.T) {
			l := e.ns.listen(t, "tcp6", "[::]:0")
			accepted := acceptOne(t, l)
			before := e.snapshot(t)
			c := e.ns.mustDial(t, "tcp6", loopback6(portOf(l.Addr())))
			s, ok := <-accepted
			if !ok {
				t.Fatal("accept failed")
			}
			defer s.Close()
			requireLoopback6(t, "client getsockname", c.LocalAddr())
			requireLoopback6(t, "client getpeername", c.RemoteAddr())
			requireLoopback6(t, "server getsockname", s.LocalAddr())
			requireLoopback6(t, "server accept/getpeername", s.RemoteAddr())
			if cp, sp := portOf(c.LocalAddr()), portOf(s.RemoteAddr()); cp != sp {
				t.Errorf("server sees client port %d, client has %d", sp, cp)
			}
			msg := bytes.Repeat([]byte("six "), 1<<18)
			go func() { s.Write(msg); s.(*net.TCPConn).CloseWrite() }()
			got := make([]byte, 0, len(msg))
			buf := make([]byte, 64<<10)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("client read %d bytes, want the %d the server wrote, unchanged", len(got), len(msg))
			}
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
		})
		t.Run("tcp-echo-half-close", func(t *testing.T) {
			l := e.ns.listen(t, "tcp6", "[::]:0")
			tcpEcho(t, l)
			before := e.snapshot(t)
			// roundTrip half-closes after writing and reads to EOF.
			tcpRoundTrip(t, e.ns, "tcp6", loopback6(portOf(l.Addr())), bytes.Repeat([]byte("half"), 100000))
			e.requireCrossed(t, before)
		})
		t.Run("tcp-refused", func(t *testing.T) {
			l := e.ns.listen(t, "tcp6", "[::]:0")
			port := portOf(l.Addr())
			l.Close()
			before := e.snapshot(t)
			start := time.Now()
			c, err := e.ns.dial("tcp6", loopback6(port), 5*time.Second)
			if err == nil {
				c.Close()
				t.Fatal("connect to a closed port: got a connection, want ECONNREFUSED")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect to a closed port: got %v, want ECONNREFUSED", err)
			}
			// "At once": lo answers in microseconds; a lost RST would
			// take the client's SYN retransmission, a second or more.
			if d := time.Since(start); d > time.Second {
				t.Errorf("ECONNREFUSED after %v, want it at once", d)
			}
			e.requireGrew(t, before, "uloop_tcp_refused_total", 1)
		})
		t.Run("tcp-reset", func(t *testing.T) {
			l := e.ns.listen(t, "tcp6", "[::]:0")
			accepted := acceptOne(t, l)
			c := e.ns.mustDial(t, "tcp6", loopback6(portOf(l.Addr())))
			s, ok := <-accepted
			if !ok {
				t.Fatal("accept failed")
			}
			defer s.Close()
			c.(*net.TCPConn).SetLinger(0) // close sends a RST
			c.Close()
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("server read after the client's reset: got %v, want ECONNRESET", err)
			}
		})
		t.Run("udp", func(t *testing.T) {
			srv := e.ns.listenUDPNet(t, "udp6", "[::]:0")
			forceRcvBuf(t, srv, 4<<20)
			dst := &net.UDPAddr{IP: net.IPv6loopback, Port: portOf(srv.LocalAddr())}
			var c *net.UDPConn // unconnected: sendto and recvfrom
			if err := e.ns.do(func() (err error) { c, err = net.ListenUDP("udp6", nil); return err }); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			forceRcvBuf(t, c, 4<<20)
			before := e.snapshot(t)
			buf := make([]byte, 70000)
			// 65,527 bytes: the largest IPv6 UDP payload without
			// jumbograms (65,535 - 8); it crosses ulo0 in fragments.
			for _, size := range []int{0, 1, 1400, 65527} {
				msg := bytes.Repeat([]byte{byte(size)}, size)
				if _, err := c.WriteToUDP(msg, dst); err != nil {
					t.Fatalf("sendto [::1] (%d bytes): %v", size, err)
				}
				srv.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := srv.ReadFromUDP(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("server got %d bytes, %v; want the %d sent, whole", n, err, size)
				}
				requireLoopback6(t, "server recvfrom", from)
				if from.Port != portOf(c.LocalAddr()) {
					t.Errorf("server sees client port %d, client has %d", from.Port, portOf(c.LocalAddr()))
				}
				if _, err := srv.WriteToUDP(buf[:n], from); err != nil {
					t.Fatalf("reply: %v", err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err = c.ReadFromUDP(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("client got %d bytes, %v; want the %d sent back, whole", n, err, size)
				}
				requireLoopback6(t, "client recvfrom", from)
				if from.Port != dst.Port {
					t.Errorf("reply from port %d, want %d", from.Port, dst.Port)
				}
			}
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_udp_flows_total", 1)
		})
		t.Run("udp-refused", func(t *testing.T) {
			probe := e.ns.listenUDP(t, "[::]:0")
			port := portOf(probe.LocalAddr())
			probe.Close()
			c := dialUDP(t, e.ns, "udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
			requireLoopback6(t, "connected client getpeername", c.RemoteAddr())
			if _, err := c.Write([]byte("anyone?")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("read after a datagram to a closed port: got %v, want ECONNREFUSED", err)
			}
		})
		for _, bind := range []string{"::", "::1"} {
			t.Run("http-curl-bind-"+bind, func(t *testing.T) {
				// python3 -m http.server on [::] and on [::1]; curl
				// -6 to localhost goes to ::1.
				dir := t.TempDir()
				blob := bytes.Repeat([]byte("localhost over ::1\n"), 100000)
				if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
					t.Fatal(err)
				}
				const port = 8006
				srv := e.ns.start(t, "python3", "-m", "http.server", "--bind", bind, "--directory", dir, strconv.Itoa(port))
				waitListening(t, srv, port)
				before := e.snapshot(t)
				out := filepath.Join(t.TempDir(), "got")
				e.ns.mustRun(t, "curl", "--silent", "--show-error", "--fail", "--max-time", "30", "-6",
					"--output", out, "http://localhost:"+strconv.Itoa(port)+"/blob")
				if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, blob) {
					t.Fatalf("curl fetched %d bytes (%v), want the %d-byte file byte for byte", len(got), err, len(blob))
				}
				e.requireCrossed(t, before)
				e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
			})
		}
		t.Run("tcp-bound-to-loopback", func(t *testing.T) {
			// A plain TCP listener on exactly [::1]: the stack reaches it
			// through the lookup hook.
			var l net.Listener
			lc := net.ListenConfig{}
			lc.SetMultipathTCP(false)
			if err := e.ns.do(func() (err error) { l, err = lc.Listen(context.Background(), "tcp6", "[::1]:0"); return err }); err != nil {
				t.Fatal(err)
			}
			accepted := acceptOne(t, l)
			defer l.Close()
			before := e.snapshot(t)
			c := e.ns.mustDial(t, "tcp6", l.Addr().String())
			s, ok := <-accepted
			if !ok {
				t.Fatal("accept failed")
			}
			defer s.Close()
			requireLoopback6(t, "client getpeername", c.RemoteAddr())
			requireLoopback6(t, "server getsockname", s.LocalAddr())
			requireLoopback6(t, "server accept/getpeername", s.RemoteAddr())
			if _, err := c.Write([]byte("bound")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "bound" {
				t.Fatalf("server read %q, %v; want \"bound\"", buf, err)
			}
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
		})
		t.Run("mptcp-and-udp-bound-to-loopback", func(t *testing.T) {
			// An MPTCP listener (Go's default) or a UDP socket bound to
			// exactly [::1] keeps lo (see docs/semantics.md); it must
			// keep working.
			l := e.ns.listen(t, "tcp6", "[::1]:0")
			tcpEcho(t, l)
			tcpRoundTrip(t, e.ns, "tcp6", l.Addr().String(), bytes.Repeat([]byte("six"), 100000))
			srv := e.ns.listenUDPNet(t, "udp6", "[::1]:0")
			udpEcho(t, srv)
			c := dialUDP(t, e.ns, "udp6", srv.LocalAddr().(*net.UDPAddr))
			if _, err := c.Write([]byte("six")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "six" {
				t.Fatalf("udp6 echo from [::1]: got %q, %v; want \"six\"", buf[:n], err)
			}
		})
		t.Run("tcp-to-itself", func(t *testing.T) {
			// A socket on [::]:P connected to [::1]:P is its own peer
			// on lo; through uloop its segments are written back with
			// their addresses swapped (stack.classify6).
			l := e.ns.listen(t, "tcp6", "[::]:0")
			port := portOf(l.Addr())
			l.Close()
			before := e.snapshot(t)
			var c net.Conn
			if err := e.ns.do(func() (err error) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv6unspecified, Port: port}, Timeout: 5 * time.Second}
				c, err = d.Dial("tcp6", loopback6(port))
				return err
			}); err != nil {
				t.Fatalf("connect [::]:%d to [::1]:%d: %v", port, port, err)
			}
			defer c.Close()
			requireLoopback6(t, "getsockname", c.LocalAddr())
			requireLoopback6(t, "getpeername", c.RemoteAddr())
			c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := bytes.Repeat([]byte("me, myself "), 100000)
			errc := make(chan error, 1)
			go func() { _, err := c.Write(msg); errc <- err }()
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("read back %d bytes: %v; want the %d written, unchanged", len(got), err, len(msg))
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_passthrough_packets_total", 3)
		})
		t.Run("ping", func(t *testing.T) {
			// Carried by lo: the kernel runs no socket hook for ICMP.
			ping(t, e.ns, "::1", "-6", "-c", "2", "-W", "2")
		})
	})
}

// TestIPv6SiblingNamespace: while uloopd carries ::1 in its namespace, ::1
// traffic in another namespace stays on that namespace's lo.
func TestIPv6SiblingNamespace(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		served := uloopEnv(t)
		sibling := kernelEnv(t)
		l := sibling.ns.listen(t, "tcp6", "[::]:0")
		tcpEcho(t, l)
		before := served.snapshot(t)
		loBefore := linkStats(t, sibling.ns, "lo")
		c := sibling.ns.mustDial(t, "tcp6", loopback6(portOf(l.Addr())))
		requireLoopback6(t, "sibling client getpeername", c.RemoteAddr())
		requireLoopback6(t, "sibling client getsockname", c.LocalAddr())
		c.Close()
		tcpRoundTrip(t, sibling.ns, "tcp6", loopback6(portOf(l.Addr())), bytes.Repeat([]byte("sibling"), 10000))
		if got := linkStats(t, sibling.ns, "lo").TxPackets; got <= loBefore.TxPackets {
			t.Errorf("sibling's lo tx_packets: got %d, want > %d", got, loBefore.TxPackets)
		}
		after := served.snapshot(t)
		if a, b := metricValue(t, after.m, "uloop_tcp_connections_total"), metricValue(t, before.m, "uloop_tcp_connections_total"); a != b {
			t.Errorf("uloop_tcp_connections_total in the served namespace: %v -> %v, want unchanged (the sibling's ::1 went through uloop)", b, a)
		}
	})
}

// TestIPv6Stop: after SIGTERM, and after SIGKILL, ::1 works through lo
// again: the hooks went with the daemon.
func TestIPv6Stop(t *testing.T) {
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(how, func(t *testing.T) {
			requireRoot(t)
			ns := newNS(t)
			// lo up first, so that undoing the takeover leaves it up.
			ns.mustRun(t, "ip", "link", "set", "lo", "up")
			e := &env{mode: "uloop", ns: ns, d: startDaemon(t, ns)}
			l := ns.listen(t, "tcp6", "[::]:0")
			tcpEcho(t, l)
			before := e.snapshot(t)
			tcpRoundTrip(t, ns, "tcp6", loopback6(portOf(l.Addr())), []byte("before"))
			e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
			if how == "SIGTERM" {
				e.d.Stop(t)
			} else {
				e.d.Kill(t)
				e.d.waitExit(t, how)
			}
			pollUntil(t, 5*time.Second, "ulo0 gone", func() (bool, string) {
				out := ns.run(t, "ip", "link", "show", tunDev)
				return out.code != 0, out.String()
			})
			// Steered now, the connect would find no route (ENETUNREACH).
			tcpRoundTrip(t, ns, "tcp6", loopback6(portOf(l.Addr())), bytes.Repeat([]byte("after"), 10000))
			u := &net.UDPAddr{IP: net.IPv6loopback, Port: 9}
			c := dialUDP(t, ns, "udp6", u)
			requireLoopback6(t, "UDP getpeername after "+how, c.RemoteAddr())
		})
	}
}

// TestIPv6Off: with --ipv6=false ulo0 has IPv6 off and ::1 stays on lo, as
// before ::1 was carried.
func TestIPv6Off(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t, "--ipv6=false")
		if v := strings.TrimSpace(e.ns.mustRun(t, "cat", "/proc/sys/net/ipv6/conf/"+tunDev+"/disable_ipv6")); v != "1" {
			t.Errorf("%s disable_ipv6 = %s, want 1", tunDev, v)
		}
		l := e.ns.listen(t, "tcp6", "[::]:0")
		tcpEcho(t, l)
		before := e.snapshot(t)
		tcpRoundTrip(t, e.ns, "tcp6", loopback6(portOf(l.Addr())), bytes.Repeat([]byte("off"), 10000))
		after := e.snapshot(t)
		if a, b := metricValue(t, after.m, "uloop_tcp_connections_total"), metricValue(t, before.m, "uloop_tcp_connections_total"); a != b {
			t.Errorf("uloop_tcp_connections_total: %v -> %v, want unchanged with --ipv6=false", b, a)
		}
	})
}

// TestIPv6NeighbourCannotReachLoopback: the lookup hook hands the stack's
// connections to the kernel's address on ulo0 to listeners bound to [::1];
// a neighbour that routes the same address to this namespace over another
// interface must not reach them (the IPv6 form of CVE-2020-8558).
//
//	e.ns (daemon's)                                peer
//	  listener [::1]:P (plain TCP), [::]:Q
//	  va fd99::1/64  <---------- veth ---------->  vb fd99::2/64
//	                                               route fd75:6c6f:6f70::/64 via fd99::1
//
// The probe is validated by Q: the peer does reach a listener on [::] at
// va's address (but not at the kernel's address on ulo0: nothing from
// outside reaches the /64). Nor may a packet from the /64 that arrives
// from outside reach a server: the hooks would show its source as ::1.
func TestIPv6NeighbourCannotReachLoopback(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		peer := newNS(t)
		e.ns.mustRun(t, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", peer.name)
		e.ns.mustRun(t, "ip", "addr", "add", "fd99::1/64", "dev", "va", "nodad")
		e.ns.mustRun(t, "ip", "link", "set", "va", "up")
		peer.mustRun(t, "ip", "addr", "add", "fd99::2/64", "dev", "vb", "nodad")
		peer.mustRun(t, "ip", "link", "set", "vb", "up")
		peer.mustRun(t, "ip", "route", "add", "fd75:6c6f:6f70::/64", "via", "fd99::1")
		kernelAddr := "fd75:6c6f:6f70::1"

		var bound net.Listener
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		if err := e.ns.do(func() (err error) { bound, err = lc.Listen(context.Background(), "tcp6", "[::1]:0"); return err }); err != nil {
			t.Fatal(err)
		}
		defer bound.Close()
		tcpEcho(t, bound)
		// Recorded by the listen hook: a local client reaches it
		// through the stack.
		before := e.snapshot(t)
		tcpRoundTrip(t, e.ns, "tcp6", bound.Addr().String(), []byte("local"))
		e.requireGrew(t, before, "uloop_tcp_connections_total", 1)

		any := e.ns.listen(t, "tcp6", "[::]:0")
		tcpEcho(t, any)
		// The control: the peer reaches a listener on [::] at va's
		// address, so the veth and route work; at the kernel's address
		// on ulo0 it reaches nothing (the /64 is uloop's alone).
		tcpRoundTrip(t, peer, "tcp6", net.JoinHostPort("fd99::1", strconv.Itoa(portOf(any.Addr()))), []byte("probe"))
		if c, err := peer.dial("tcp6", net.JoinHostPort(kernelAddr, strconv.Itoa(portOf(any.Addr()))), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("connect to [%s]:%d (a listener on [::]) from the peer: got a connection, want none", kernelAddr, portOf(any.Addr()))
		}

		target := net.JoinHostPort(kernelAddr, strconv.Itoa(portOf(bound.Addr())))
		if c, err := peer.dial("tcp6", target, 2*time.Second); err == nil {
			c.Close()
			t.Fatalf("connect to %s from the peer namespace: got the listener on [::1], want no connection", target)
		}

		t.Run("spoofed-source", func(t *testing.T) {
			// The hooks show every address of the /64 as ::1, so a
			// datagram from one of them that came from outside would
			// look to the server as if from ::1. The lookup hook drops
			// it; one from the peer's own address (the control) arrives.
			peer.mustRun(t, "ip", "addr", "add", "fd75:6c6f:6f70::5/128", "dev", "vb", "nodad")
			srv := e.ns.listenUDPNet(t, "udp6", "[::]:0")
			dst := &net.UDPAddr{IP: net.ParseIP("fd99::1"), Port: portOf(srv.LocalAddr())}
			send := func(from string, msg string) {
				t.Helper()
				if err := peer.do(func() error {
					c, err := net.DialUDP("udp6", &net.UDPAddr{IP: net.ParseIP(from)}, dst)
					if err != nil {
						return err
					}
					defer c.Close()
					_, err = c.Write([]byte(msg))
					return err
				}); err != nil {
					t.Fatalf("send from %s: %v", from, err)
				}
			}
			send("fd75:6c6f:6f70::5", "spoofed")
			send("fd99::2", "control")
			buf := make([]byte, 64)
			for {
				srv.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, from, err := srv.ReadFromUDP(buf)
				if err != nil {
					t.Fatalf("the control datagram from fd99::2 did not arrive: %v", err)
				}
				if string(buf[:n]) == "spoofed" {
					t.Fatalf("a datagram from fd75:6c6f:6f70::5 that arrived on va reached the server, which sees it from %v", from)
				}
				if string(buf[:n]) == "control" {
					break
				}
			}
		})
	})
}
