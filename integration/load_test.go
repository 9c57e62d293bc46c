//go:build linux

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// heapMargin is how far the daemon's live heap (go_memstats_heap_inuse_bytes
// after a forced GC) may end above its baseline after the churn. It leaves
// room for what a busy stack legitimately keeps (gVisor's and the relay's
// buffer pools, grown maps, the runtime's own structures: a few MiB), while
// a leak of 4 KiB per TCP connection, far less than one gVisor endpoint,
// would already exceed it over 10,000 connections.
const heapMargin = 32 << 20

// TestChurn: many short connections and flows in a row leave nothing behind:
// no relayed flow, no goroutine, no heap beyond a margin, and none fails.
func TestChurn(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t, "--udp-timeout", "1s")
		collectGarbage(t, e.ns)
		base := metrics(t, e.ns)
		baseG, baseHeap := metricValue(t, base, "go_goroutines"), metricValue(t, base, "go_memstats_heap_inuse_bytes")
		t.Logf("baseline after ready: go_goroutines %v, heap in use %.1f MiB, RSS %.1f MiB",
			baseG, baseHeap/(1<<20), metricValue(t, base, "process_resident_memory_bytes")/(1<<20))

		t.Run("tcp-10000", func(t *testing.T) {
			l := e.ns.listen(t, "tcp", "127.0.0.1:0")
			tcpEcho(t, l)
			churnTCP(t, e, l.Addr().String(), 10000, 4)
		})
		t.Run("udp-2000", func(t *testing.T) {
			srv := e.ns.listenUDP(t, "127.0.0.1:0")
			udpEcho(t, srv)
			churnUDP(t, e, srv.LocalAddr().(*net.UDPAddr), 2000)
		})

		// Idle again: flows expire (UDP after 1 s), TIME-WAIT endpoints go
		// (1 s), and their goroutines with them.
		pollUntil(t, 15*time.Second, "uloopd to be idle again", func() (bool, string) {
			m := metrics(t, e.ns)
			tcp, udp, g := metricValue(t, m, "uloop_tcp_connections_active"), metricValue(t, m, "uloop_udp_flows_active"), metricValue(t, m, "go_goroutines")
			return tcp == 0 && udp == 0 && g <= baseG+goroutineSlack,
				fmt.Sprintf("uloop_tcp_connections_active %v, uloop_udp_flows_active %v (want 0), go_goroutines %v (want <= %v)", tcp, udp, g, baseG+goroutineSlack)
		})
		collectGarbage(t, e.ns)
		end := metrics(t, e.ns)
		heap := metricValue(t, end, "go_memstats_heap_inuse_bytes")
		t.Logf("after the churn: go_goroutines %v, heap in use %.1f MiB (baseline %.1f MiB), RSS %.1f MiB",
			metricValue(t, end, "go_goroutines"), heap/(1<<20), baseHeap/(1<<20), metricValue(t, end, "process_resident_memory_bytes")/(1<<20))
		if heap > baseHeap+heapMargin {
			t.Errorf("go_memstats_heap_inuse_bytes after the churn and a GC: got %.1f MiB, want <= baseline %.1f MiB + %d MiB",
				heap/(1<<20), baseHeap/(1<<20), heapMargin>>20)
		}
	})
}

// churnTCP makes n connections to addr (an echo server), workers at a time,
// each one connect, a 1-byte echo and a close; none may fail.
func churnTCP(t *testing.T, e *env, addr string, n, workers int) {
	before := e.snapshot(t)
	var next, failed atomic.Int64
	var mu sync.Mutex // mu guards first
	var first error
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if err := echoByte(e.ns, addr, byte(i)); err != nil {
					failed.Add(1)
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d TCP connections (%d at a time) in %v: %.0f/s", n, workers, took.Round(time.Millisecond), float64(n)/took.Seconds())
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d short TCP connections failed, want 0; first: %v%s", f, n, first, e.diagnostics(t))
	}
	e.requireGrew(t, before, "uloop_tcp_connections_total", float64(n))
}

// echoByte connects, sends b, reads it back and closes.
func echoByte(ns *netNS, addr string, b byte) error {
	c, err := ns.dial("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{b}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got[0] != b {
		return fmt.Errorf("echo: got %#x, want %#x", got[0], b)
	}
	return nil
}

// churnUDP opens n UDP flows to srv (an echo server) one after another, each
// a new socket, a datagram, its echo and a close; none may fail.
func churnUDP(t *testing.T, e *env, srv *net.UDPAddr, n int) {
	before := e.snapshot(t)
	start := time.Now()
	failed := 0
	var first error
	// The kernel picks each new socket's port at random, so a port comes
	// back now and then while its earlier flow is still open (within the
	// 1 s idle timeout), and the datagram joins that flow: as on lo, a UDP
	// flow is its 4-tuple. Only distinct ports are sure to be new flows.
	ports := map[int]bool{}
	for i := range n {
		if err := echoDatagram(e.ns, srv, []byte(fmt.Sprintf("flow %d", i)), ports); err != nil {
			if first == nil {
				first = fmt.Errorf("flow %d: %w", i, err)
			}
			failed++
		}
	}
	took := time.Since(start)
	t.Logf("%d UDP flows in %v: %.0f/s", n, took.Round(time.Millisecond), float64(n)/took.Seconds())
	if failed > 0 {
		t.Fatalf("%d of %d short UDP flows failed, want 0; first: %v%s", failed, n, first, e.diagnostics(t))
	}
	e.requireGrew(t, before, "uloop_udp_flows_total", float64(len(ports)))
}

// echoDatagram sends msg from a new connected socket and requires it back;
// it adds the socket's port to ports if that is not nil.
func echoDatagram(ns *netNS, srv *net.UDPAddr, msg []byte, ports map[int]bool) error {
	c, err := dialUDPErr(ns, "udp", srv)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if ports != nil {
		ports[portOf(c.LocalAddr())] = true
	}
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(msg)+1)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("echo: got %q, want %q", buf[:n], msg)
	}
	return nil
}

// TestFlowLimit: with --max-flows 8 and 8 TCP connections held, a 9th
// connect and a new UDP flow (to 127.0.0.1 or ::1) are refused at once (as a port without a
// listener would refuse them), the 8 go on working, and once they close new
// connections work again.
func TestFlowLimit(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		const limit = 8
		e := uloopEnv(t, "--max-flows", fmt.Sprint(limit))
		l := e.ns.listen(t, "tcp", "127.0.0.1:0")
		tcpEcho(t, l)
		srv := e.ns.listenUDP(t, "127.0.0.1:0")
		udpEcho(t, srv)
		srvAddr := srv.LocalAddr().(*net.UDPAddr)

		held := make([]net.Conn, limit)
		for i := range held {
			held[i] = e.ns.mustDial(t, "tcp", l.Addr().String())
			held[i].SetDeadline(time.Now().Add(commandTimeout))
			exchange(t, held[i], held[i], []byte(fmt.Sprintf("held %d", i)))
		}
		// uloopd's readiness probe may still hold a flow for a moment.
		pollUntil(t, 5*time.Second, "exactly the held connections to be relayed", func() (bool, string) {
			a := metricValue(t, metrics(t, e.ns), "uloop_tcp_connections_active")
			return a == limit, fmt.Sprintf("uloop_tcp_connections_active %v, want %d", a, limit)
		})
		before := e.snapshot(t)

		t.Run("tcp-refused", func(t *testing.T) {
			start := time.Now()
			c, err := e.ns.dial("tcp", l.Addr().String(), 3*time.Second)
			elapsed := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatalf("connect number %d with --max-flows %d: got a connection, want ECONNREFUSED", limit+1, limit)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect number %d with --max-flows %d: got %v, want ECONNREFUSED", limit+1, limit, err)
			}
			if elapsed >= 100*time.Millisecond {
				t.Errorf("connect number %d refused after %v, want < 100ms", limit+1, elapsed)
			}
		})
		t.Run("udp-refused", func(t *testing.T) {
			c := dialUDP(t, e.ns, "udp", srvAddr)
			if _, err := c.Write([]byte("one too many")); err != nil {
				t.Fatalf("first write: got %v, want success (the refusal comes after)", err)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(make([]byte, 64))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("read on a new UDP flow past --max-flows %d: got %d bytes, err %v; want ECONNREFUSED", limit, n, err)
			}
		})
		t.Run("udp6-refused", func(t *testing.T) {
			// Over ::1 too: the stack's ICMPv6 error quotes the
			// datagram as the client's socket sent it.
			srv6 := e.ns.listenUDPNet(t, "udp6", "[::]:0")
			udpEcho(t, srv6)
			c := dialUDP(t, e.ns, "udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: portOf(srv6.LocalAddr())})
			if _, err := c.Write([]byte("one too many")); err != nil {
				t.Fatalf("first write: got %v, want success (the refusal comes after)", err)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(make([]byte, 64))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("read on a new UDP flow to [::1] past --max-flows %d: got %d bytes, err %v; want ECONNREFUSED", limit, n, err)
			}
		})
		t.Run("held-still-work", func(t *testing.T) {
			for i, c := range held {
				exchange(t, c, c, []byte(fmt.Sprintf("still held %d", i)))
			}
		})
		e.requireGrew(t, before, "uloop_flows_rejected_total", 3)

		t.Run("after-closing", func(t *testing.T) {
			for _, c := range held {
				c.Close()
			}
			pollUntil(t, 5*time.Second, "the held connections to be released", func() (bool, string) {
				a := metricValue(t, metrics(t, e.ns), "uloop_tcp_connections_active")
				return a == 0, fmt.Sprintf("uloop_tcp_connections_active %v, want 0", a)
			})
			for i := range limit + 1 {
				tcpRoundTrip(t, e.ns, "tcp", l.Addr().String(), []byte(fmt.Sprintf("again %d", i)))
			}
			if err := echoDatagram(e.ns, srvAddr, []byte("a new flow"), nil); err != nil {
				t.Fatalf("UDP flow after the held connections closed: %v, want an echo", err)
			}
		})
	})
}
