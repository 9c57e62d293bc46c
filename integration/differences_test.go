//go:build linux

package integration

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestKnownDifferences pins what programs see differently on uloop than on
// lo (docs/semantics.md lists each): if one of these starts to fail, the
// difference has changed and the document must change with it.
func TestKnownDifferences(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("urgent-data", func(t *testing.T) { testUrgentData(t, e) })
		t.Run("mss", func(t *testing.T) { testMSS(t, e) })
		t.Run("ttl-and-tos", func(t *testing.T) { testTTLAndTOS(t, e) })
	})
}

// tcpPair returns a connected client and the server's accepted socket.
func tcpPair(t *testing.T, e *env) (client, server *net.TCPConn) {
	t.Helper()
	c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// testUrgentData: a byte sent with MSG_OOB. On lo it is out of band: the
// stream the server reads skips it. uloop's stack (gVisor) does not
// implement the urgent pointer, so the byte arrives in the stream, in place.
func testUrgentData(t *testing.T, e *env) {
	before := e.snapshot(t)
	c, s := tcpPair(t, e)
	send := func(b []byte, flags int) {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Write(func(fd uintptr) bool {
			serr = syscall.Sendto(int(fd), b, flags, nil)
			return serr != syscall.EAGAIN
		}); err != nil || serr != nil {
			t.Fatalf("send %q flags %#x: %v %v", b, flags, err, serr)
		}
	}
	send([]byte("ab"), 0)
	send([]byte("X"), syscall.MSG_OOB)
	send([]byte("cd"), 0)
	c.CloseWrite()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	want := "abcd" // lo: the urgent byte is out of band
	if e.uloop() {
		want = "abXcd"
	}
	if string(got) != want {
		t.Errorf("stream read by the server: got %q, want %q", got, want)
	}
	e.requireCrossed(t, before)
}

// testMSS: the maximum segment size each side reports (TCP_MAXSEG). On lo
// the two sockets negotiate with each other; through uloop each negotiates
// with the stack, whose MSS option and window are its own, so the values
// differ from lo's by a few dozen bytes (docs/semantics.md has the figures).
// Logged; asserted only to be sane, since the kernel derives them.
func testMSS(t *testing.T, e *env) {
	c, s := tcpPair(t, e)
	mss := func(conn *net.TCPConn) (v int) {
		sockopt(t, conn, "TCP_MAXSEG", func(fd int) (err error) {
			v, err = syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_MAXSEG)
			return err
		})
		return v
	}
	cm, sm := mss(c), mss(s)
	t.Logf("%s: TCP_MAXSEG client %d, server %d", e.mode, cm, sm)
	for _, v := range []int{cm, sm} {
		if v < 536 || v > 65495 {
			t.Errorf("TCP_MAXSEG %d outside [536, 65495]", v)
		}
	}
}

// testTTLAndTOS: the TTL and TOS byte a UDP sender sets. On lo the receiver
// sees them (IP_RECVTTL, IP_RECVTOS); through uloop the datagram is carried
// by the stack's own endpoint, which sends with its defaults (TTL 64, TOS 0).
func testTTLAndTOS(t *testing.T, e *env) {
	before := e.snapshot(t)
	r := e.ns.listenUDP(t, "127.0.0.1:0")
	c := e.ns.listenUDP(t, "127.0.0.1:0")
	setsockopt := func(conn *net.UDPConn, opt, v int) {
		sockopt(t, conn, fmt.Sprintf("setsockopt %d", opt), func(fd int) error {
			return syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, opt, v)
		})
	}
	setsockopt(r, syscall.IP_RECVTTL, 1)
	setsockopt(r, syscall.IP_RECVTOS, 1)
	setsockopt(c, syscall.IP_TTL, 9)
	setsockopt(c, syscall.IP_TOS, 0x28)
	if _, err := c.WriteToUDP([]byte("x"), r.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf, oob := make([]byte, 16), make([]byte, 256)
	_, oobn, _, _, err := r.ReadMsgUDP(buf, oob)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	got := map[int32]int{}
	for _, m := range msgs {
		if m.Header.Level == syscall.IPPROTO_IP && len(m.Data) > 0 {
			got[m.Header.Type] = int(m.Data[0]) // IP_TTL is an int, IP_TOS a byte: both little-endian here
		}
	}
	wantTTL, wantTOS := 9, 0x28
	if e.uloop() {
		wantTTL, wantTOS = 64, 0
	}
	if got[syscall.IP_TTL] != wantTTL || got[syscall.IP_TOS] != wantTOS {
		t.Errorf("received TTL %d TOS %#x, want TTL %d TOS %#x", got[syscall.IP_TTL], got[syscall.IP_TOS], wantTTL, wantTOS)
	}
	e.requireCrossed(t, before)
}
