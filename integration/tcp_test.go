//go:build linux

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/stack"
)

// TestTCP: what programs see of TCP over 127/8, on lo and through uloopd.
func TestTCP(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("addresses", func(t *testing.T) { testTCPAddresses(t, e) })
		t.Run("refused", func(t *testing.T) { testTCPRefused(t, e) })
		t.Run("half-close", func(t *testing.T) { testTCPHalfClose(t, e) })
		t.Run("reset", func(t *testing.T) { testTCPReset(t, e) })
		t.Run("concurrent-200", func(t *testing.T) { testTCPConcurrent(t, e, 200) })
		t.Run("backpressure", func(t *testing.T) { testTCPBackpressure(t, e) })
		t.Run("transfer-1GiB", func(t *testing.T) { testTCPTransfer(t, e, 1<<30) })
	})
}

// acceptOne accepts a single connection on l in the background.
func acceptOne(t *testing.T, l net.Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	t.Cleanup(func() {
		select {
		case c, ok := <-ch: // accepted, but the test never took it
			if ok {
				c.Close()
			}
		default:
		}
	})
	return ch
}

// connPair returns a connected client and the server's accepted connection.
func connPair(t *testing.T, ns *netNS, listenAddr, dialHost string) (client, server net.Conn) {
	t.Helper()
	l := ns.listen(t, "tcp", listenAddr)
	accepted := acceptOne(t, l)
	dialAddr := net.JoinHostPort(dialHost, strconv.Itoa(portOf(l.Addr())))
	client = ns.mustDial(t, "tcp", dialAddr)
	select {
	case server = <-accepted:
		if server == nil {
			t.Fatalf("accept on %s failed", l.Addr())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("dial %s succeeded but %s accepted nothing within 5s", dialAddr, l.Addr())
	}
	t.Cleanup(func() { server.Close() })
	deadline := time.Now().Add(30 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	return client, server
}

func testTCPAddresses(t *testing.T, e *env) {
	for _, tc := range []struct{ listen, dial string }{
		{"127.0.0.1", "127.0.0.1"},
		{"127.5.5.5", "127.5.5.5"},
		{"0.0.0.0", "0.0.0.0"}, // connect(0.0.0.0) means this host: Linux uses 127.0.0.1
		{"0.0.0.0", "127.0.0.1"},
		{"0.0.0.0", "127.6.6.6"},
	} {
		t.Run(tc.listen+"<-"+tc.dial, func(t *testing.T) {
			before := e.snapshot(t)
			c, s := connPair(t, e.ns, tc.listen+":0", tc.dial)
			if got, want := s.RemoteAddr().String(), c.LocalAddr().String(); got != want {
				t.Errorf("server's RemoteAddr: got %s, want the client's LocalAddr %s", got, want)
			}
			if got, want := c.RemoteAddr().String(), s.LocalAddr().String(); got != want {
				t.Errorf("client's RemoteAddr: got %s, want the server's LocalAddr %s", got, want)
			}
			exchange(t, c, s, []byte("hello"))
			exchange(t, s, c, []byte("world"))
			// connect(0.0.0.0) is routed straight to the loopback device
			// without a policy-rule lookup (ip_route_output_key_hash_rcu), so
			// its SYN does not cross ulo0; only what the programs see counts.
			if tc.dial != "0.0.0.0" {
				e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
				e.requireCrossed(t, before)
			}
		})
	}
}

// exchange writes msg on from and requires to to read exactly msg.
func exchange(t *testing.T, from, to net.Conn, msg []byte) {
	t.Helper()
	if _, err := from.Write(msg); err != nil {
		t.Fatalf("write %s -> %s: %v", from.LocalAddr(), from.RemoteAddr(), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("read at %s: %v", to.LocalAddr(), err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read at %s: got %q, want %q", to.LocalAddr(), got, msg)
	}
}

func testTCPRefused(t *testing.T, e *env) {
	for _, host := range []string{"127.0.0.1", "127.9.9.9"} {
		t.Run(host, func(t *testing.T) {
			before := e.snapshot(t)
			addr := host + ":9" // nothing listens in a fresh namespace
			start := time.Now()
			c, err := e.ns.dial("tcp", addr, 3*time.Second)
			elapsed := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatalf("dial %s with no listener: got a connection, want ECONNREFUSED", addr)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial %s with no listener: got %v, want ECONNREFUSED", addr, err)
			}
			// On lo the RST comes back within microseconds; a relay that
			// answers by timeout or retransmission would take 1 s or more.
			if elapsed >= 100*time.Millisecond {
				t.Errorf("dial %s refused after %v, want < 100ms", addr, elapsed)
			}
			e.requireGrew(t, before, "uloop_tcp_refused_total", 1)
			e.requireCrossed(t, before)
		})
	}
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite at %s: %v", c.LocalAddr(), err)
	}
}

// readToEOF requires c to deliver exactly want followed by EOF.
func readToEOF(t *testing.T, c net.Conn, want string) {
	t.Helper()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF at %s: got error %v after %q, want EOF after %q", c.LocalAddr(), err, got, want)
	}
	if string(got) != want {
		t.Fatalf("read to EOF at %s: got %q, want %q", c.LocalAddr(), got, want)
	}
}

func testTCPHalfClose(t *testing.T, e *env) {
	t.Run("client-closes-write", func(t *testing.T) {
		before := e.snapshot(t)
		c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
		c.Write([]byte("request"))
		closeWrite(t, c)
		readToEOF(t, s, "request") // the server sees the client's FIN ...
		if _, err := s.Write([]byte("response")); err != nil {
			t.Fatalf("server write after client's FIN: %v", err) // ... and can still answer
		}
		s.Close()
		readToEOF(t, c, "response")
		e.requireCrossed(t, before)
	})
	t.Run("server-closes-write", func(t *testing.T) {
		before := e.snapshot(t)
		c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
		s.Write([]byte("greeting"))
		closeWrite(t, s)
		readToEOF(t, c, "greeting")
		if _, err := c.Write([]byte("reply")); err != nil {
			t.Fatalf("client write after server's FIN: %v", err)
		}
		c.Close()
		readToEOF(t, s, "reply")
		e.requireCrossed(t, before)
	})
}

// testTCPReset: close with SO_LINGER 0 sends a RST; the peer's next read must
// fail with ECONNRESET, not see a clean EOF.
func testTCPReset(t *testing.T, e *env) {
	for _, side := range []string{"client-aborts", "server-aborts"} {
		t.Run(side, func(t *testing.T) {
			c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
			exchange(t, c, s, []byte("x"))
			exchange(t, s, c, []byte("y"))
			abort, peer := c, s
			if side == "server-aborts" {
				abort, peer = s, c
			}
			if err := abort.(*net.TCPConn).SetLinger(0); err != nil {
				t.Fatal(err)
			}
			abort.Close()
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := peer.Read(make([]byte, 16))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("peer read after SO_LINGER 0 close: got n=%d err=%v, want ECONNRESET", n, err)
			}
		})
	}
}

func testTCPConcurrent(t *testing.T, e *env, conns int) {
	before := e.snapshot(t)
	l := e.ns.listen(t, "tcp", "127.0.0.1:0")
	tcpEcho(t, l)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each connection carries its own bytes, so cross-talk between
			// relayed connections would show.
			msg := bytes.Repeat([]byte(fmt.Sprintf("conn %04d|", i)), 64<<10/10)
			errs <- roundTrip(e.ns, "tcp", l.Addr().String(), msg)
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	var first error
	for err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			failed++
		}
	}
	if failed > 0 {
		t.Fatalf("%d concurrent connections: %d failed, want 0; first: %v%s", conns, failed, first, e.diagnostics(t))
	}
	e.requireGrew(t, before, "uloop_tcp_connections_total", float64(conns))
	e.requireCrossed(t, before)
}

// sysctlInts reads a whitespace-separated integer sysctl inside ns.
func sysctlInts(t *testing.T, ns *netNS, path string) []int64 {
	t.Helper()
	out := ns.mustRun(t, "cat", "/proc/sys/"+strings.ReplaceAll(path, ".", "/"))
	var v []int64
	for _, f := range strings.Fields(out) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", path, out, err)
		}
		v = append(v, n)
	}
	return v
}

// testTCPBackpressure: a server that stops reading must stop the client. The
// bytes a client can write before blocking are bounded by what the path can
// hold: the client's send buffer (at most tcp_wmem[2]) plus the server's
// receive buffer (at most tcp_rmem[2]), plus, through uloopd, what the daemon
// holds for one direction of a connection (stack.TCPBytesPerDirection:
// gVisor's receive buffer on the client side, the relay's copy buffer and
// gVisor's send buffer on the server side). The namespace defaults here are
// 4 MiB and up to 32 MiB (copied from the host), so the bound is at most
// about 44 MiB; the test requires both that bound and < 64 MiB. After the
// client stops, the server reads everything that was accepted: nothing may
// be lost.
func testTCPBackpressure(t *testing.T, e *env) {
	const (
		daemonBound = stack.TCPBytesPerDirection
		hardLimit   = 64 << 20
		chunk       = 256 << 10
	)
	bound := sysctlInts(t, e.ns, "net.ipv4.tcp_wmem")[2] + sysctlInts(t, e.ns, "net.ipv4.tcp_rmem")[2]
	if e.uloop() {
		bound += daemonBound
	}
	before := e.snapshot(t)
	c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
	buf := bytes.Repeat([]byte("backpressure"), chunk/12+1)[:chunk]
	var total int64
	blocked := false
	for total < hardLimit {
		// A write that cannot finish within 500 ms means the path is full;
		// relaying 64 MiB at even 1 Gbit/s needs no pause that long.
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(buf)
		total += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			blocked = true
			break
		}
		if err != nil {
			t.Fatalf("client write after %d bytes: %v", total, err)
		}
	}
	t.Logf("client wrote %d bytes (%.1f MiB) before blocking; bound %d (%.1f MiB)", total, float64(total)/(1<<20), bound, float64(bound)/(1<<20))
	if !blocked {
		t.Fatalf("client wrote %d bytes to a server that never reads without blocking, want a block before %d", total, hardLimit)
	}
	if total >= hardLimit || total > bound {
		t.Errorf("bytes accepted before blocking: got %d, want <= %d and < %d", total, bound, hardLimit)
	}
	e.requireCrossed(t, before)

	// Drain: the server gets every byte the client's writes accepted.
	c.SetWriteDeadline(time.Time{})
	closeWrite(t, c)
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.Copy(io.Discard, s)
	if err != nil || got != total {
		t.Fatalf("server drained: got %d bytes (err %v), want %d then EOF", got, err, total)
	}
}

// testTCPTransfer: size bytes client -> server, byte-identical (SHA-256 at
// both ends). The data is random with the block number stamped into every
// 64 KiB, so a lost, repeated or reordered block changes the hash.
func testTCPTransfer(t *testing.T, e *env, size int64) {
	before := e.snapshot(t)
	c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
	deadline := time.Now().Add(2 * time.Minute)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)

	type received struct {
		n   int64
		sum [32]byte
		err error
	}
	rc := make(chan received, 1)
	go func() {
		h := sha256.New()
		n, err := io.CopyBuffer(h, s, make([]byte, 1<<20))
		var r received
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		rc <- r
	}()

	const block = 64 << 10
	pattern := make([]byte, 4<<20)
	rng := rand.NewChaCha8([32]byte{'u', 'l', 'o', 'o', 'p'})
	rng.Read(pattern)
	buf := make([]byte, len(pattern))
	h := sha256.New()
	start := time.Now()
	var sent int64
	for blockNo := uint64(0); sent < size; {
		copy(buf, pattern)
		for off := 0; off < len(buf); off += block {
			binary.BigEndian.PutUint64(buf[off:], blockNo)
			blockNo++
		}
		n := min(int64(len(buf)), size-sent)
		h.Write(buf[:n])
		if _, err := c.Write(buf[:n]); err != nil {
			t.Fatalf("client write after %d bytes: %v", sent, err)
		}
		sent += n
	}
	closeWrite(t, c)
	r := <-rc
	elapsed := time.Since(start)
	if r.err != nil {
		t.Fatalf("server read after %d bytes: %v", r.n, r.err)
	}
	if r.n != size {
		t.Fatalf("server received %d bytes, want %d", r.n, size)
	}
	if want := h.Sum(nil); !bytes.Equal(r.sum[:], want) {
		t.Fatalf("sha256 at server: got %x, want %x (the client's)", r.sum, want)
	}
	t.Logf("%d MiB in %v (%.2f Gbit/s, hashing at both ends included)", size>>20, elapsed.Round(time.Millisecond), float64(size)*8/elapsed.Seconds()/1e9)
	e.requireCrossed(t, before)
	if before != nil {
		after := e.snapshot(t)
		// The payload crossed ulo0 into the daemon and back out of it.
		if got := after.link.TxBytes - before.link.TxBytes; got < uint64(size) {
			t.Errorf("%s tx_bytes grew by %d, want >= %d (the payload)", tunDev, got, size)
		}
		if got := after.link.RxBytes - before.link.RxBytes; got < uint64(size) {
			t.Errorf("%s rx_bytes grew by %d, want >= %d (the payload)", tunDev, got, size)
		}
	}
}
