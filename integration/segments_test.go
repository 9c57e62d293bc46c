//go:build linux

package integration

import (
	"io"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRelayKeepsSegmentsWhole: a bulk transfer through uloopd at the
// default MTU reaches the server in about as many TCP segments as the
// client sent, as on lo. At MTU 65535 each of the kernel's full segments
// (65483 data bytes) was relayed as two (65374 + 109, gVisor's largest GSO
// segment and the rest), so the server took about twice as many segments
// as the client sent, and uloopd wrote twice as many packets to ulo0.
// Counted by the kernel in each socket's TCP_INFO.
func TestRelayKeepsSegmentsWhole(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		e := uloopEnv(t)
		for _, tc := range []struct{ name, network, listen string }{
			{"127.0.0.1", "tcp4", "127.0.0.1:0"},
			{"::1", "tcp6", "[::]:0"}, // through the socket hooks
		} {
			t.Run(tc.name, func(t *testing.T) {
				l := e.ns.listen(t, tc.network, tc.listen)
				addr := l.Addr().String()
				if tc.network == "tcp6" {
					addr = loopback6(portOf(l.Addr()))
				}
				before := e.snapshot(t)
				checkSegmentsWhole(t, e.ns, l, tc.network, addr)
				e.requireCrossed(t, before)
			})
		}
	})
}

// checkSegmentsWhole sends 64 MiB from a client dialled to addr to the
// server accepted on l and compares the data segments each socket counted.
func checkSegmentsWhole(t *testing.T, ns *netNS, l net.Listener, network, addr string) {
	accepted := acceptOne(t, l)
	c := ns.mustDial(t, network, addr)
	defer c.Close()
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer s.Close()

	const total = 64 << 20
	done := make(chan error, 1)
	go func() {
		n, err := io.Copy(io.Discard, s)
		if err == nil && n != total {
			err = io.ErrUnexpectedEOF
		}
		done <- err
	}()
	buf := make([]byte, 1<<20)
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("server received: %v", err)
	}
	out, in := tcpInfo(t, c), tcpInfo(t, s)
	t.Logf("client sent %d data segments, server received %d", out.Data_segs_out, in.Data_segs_in)
	// At least 64 MiB / 65374 bytes; then the relay may send a segment a
	// few bytes short where its reads and the client's segments do not
	// line up, and merge others.
	if out.Data_segs_out < total/65536 {
		t.Fatalf("client sent %d data segments for %d bytes: not full-sized segments, so this checks nothing", out.Data_segs_out, total)
	}
	if limit := out.Data_segs_out + out.Data_segs_out/4; in.Data_segs_in > limit {
		t.Errorf("server received %d data segments for the client's %d, want at most %d: the relay splits segments", in.Data_segs_in, out.Data_segs_out, limit)
	}
}

// tcpInfo is the kernel's TCP_INFO for c.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	var info *unix.TCPInfo
	sockopt(t, c.(syscall.Conn), "TCP_INFO", func(fd int) (err error) {
		info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		return err
	})
	return info
}
