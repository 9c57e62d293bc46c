//go:build linux

package integration

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// TestSelfAddressed: a socket that sends to its own address. On lo a UDP
// socket receives the datagrams it sends to itself, and a TCP socket that
// connects to its own address and port is connected to itself (a
// simultaneous open), reading back what it writes. Test suites rely on both
// (Go's net tests, echo servers stopped by a datagram to themselves).
func TestSelfAddressed(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("udp", func(t *testing.T) { testUDPSelf(t, e) })
		t.Run("udp-connected", func(t *testing.T) { testUDPSelfConnected(t, e) })
		t.Run("udp-self-and-server", func(t *testing.T) { testUDPSelfAndServer(t, e) })
		t.Run("tcp", func(t *testing.T) { testTCPSelf(t, e) })
	})
}

// selfSizes adds the empty datagram to udpSizes: Go's TestUDPZeroBytePayload
// sends one to itself.
var selfSizes = append([]int{0}, udpSizes...)

func testUDPSelf(t *testing.T, e *env) {
	for _, bind := range []string{"127.0.0.1:0", "127.5.5.5:0"} {
		t.Run(bind, func(t *testing.T) {
			before := e.snapshot(t)
			c := e.ns.listenUDP(t, bind)
			self := c.LocalAddr().(*net.UDPAddr)
			for _, size := range selfSizes {
				var msg []byte
				if size > 0 {
					msg = datagram('s', size)
				}
				if _, err := c.WriteToUDP(msg, self); err != nil {
					t.Fatalf("send %d bytes to self %s: %v", size, self, err)
				}
				readDatagram(t, c, self.String(), msg)
			}
			e.requireCrossed(t, before)
			e.requireGrew(t, before, "uloop_udp_flows_total", 1)
		})
	}
}

// testUDPSelfConnected: a socket connected to its own address, as Go's
// TestUDPConnSpecificMethods makes one, uses write and read.
func testUDPSelfConnected(t *testing.T, e *env) {
	before := e.snapshot(t)
	// A port nobody uses: take one from the kernel and give it back.
	probe := e.ns.listenUDP(t, "127.0.0.1:0")
	self := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: portOf(probe.LocalAddr())}
	probe.Close()
	var c *net.UDPConn
	err := e.ns.do(func() (err error) {
		c, err = net.DialUDP("udp", self, self)
		return err
	})
	if err != nil {
		t.Fatalf("dial udp %s from itself: %v", self, err)
	}
	defer c.Close()
	for _, size := range []int{1, 1400, 65507} {
		msg := datagram('c', size)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write %d bytes to self: %v", size, err)
		}
		readDatagram(t, c, self.String(), msg)
	}
	e.requireCrossed(t, before)
}

// testUDPSelfAndServer: one socket talks to a server and to itself in turn;
// neither flow disturbs the other.
func testUDPSelfAndServer(t *testing.T, e *env) {
	before := e.snapshot(t)
	srv := e.ns.listenUDP(t, "127.0.0.1:0")
	c := e.ns.listenUDP(t, "127.0.0.1:0")
	self := c.LocalAddr().(*net.UDPAddr)
	srvAddr := srv.LocalAddr().(*net.UDPAddr)
	for i := 0; i < 3; i++ {
		toSrv, toSelf := datagram(byte('a'+i), 100), datagram(byte('x'+i), 200)
		if _, err := c.WriteToUDP(toSrv, srvAddr); err != nil {
			t.Fatal(err)
		}
		readDatagram(t, srv, self.String(), toSrv)
		if _, err := c.WriteToUDP(toSelf, self); err != nil {
			t.Fatal(err)
		}
		readDatagram(t, c, self.String(), toSelf)
		reply := datagram(byte('r'+i), 300)
		if _, err := srv.WriteToUDP(reply, self); err != nil {
			t.Fatal(err)
		}
		readDatagram(t, c, srvAddr.String(), reply)
	}
	e.requireCrossed(t, before)
	e.requireGrew(t, before, "uloop_udp_flows_total", 2)
}

// testTCPSelf: connect a socket to its own address and port. It is then
// connected to itself: its addresses are equal, it reads back what it
// writes (also while writing more than its buffers hold), and a half-close
// reaches its own read side as EOF.
func testTCPSelf(t *testing.T, e *env) {
	before := e.snapshot(t)
	// A port nobody uses: take one from the kernel and give it back.
	l := e.ns.listen(t, "tcp", "127.0.0.1:0")
	self := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: portOf(l.Addr())}
	l.Close()

	var c *net.TCPConn
	err := e.ns.do(func() error {
		d := net.Dialer{LocalAddr: self, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", self.String())
		if err == nil {
			c = nc.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		t.Fatalf("connect %s to itself: %v%s", self, err, e.diagnostics(t))
	}
	defer c.Close()
	if c.LocalAddr().String() != self.String() || c.RemoteAddr().String() != self.String() {
		t.Errorf("addresses: got local %s remote %s, want both %s", c.LocalAddr(), c.RemoteAddr(), self)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))

	// A small message, then 4 MiB written while it is read back: more than
	// the socket buffers hold, so writing and reading must interleave.
	hello := []byte("hello, me")
	if _, err := c.Write(hello); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(hello))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("read back: got %q, %v; want %q", got, err, hello)
	}
	bulk := make([]byte, 4<<20)
	rand.Read(bulk)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(bulk)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	back, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		t.Fatalf("write %d bytes and half-close: %v", len(bulk), werr)
	}
	if err != nil {
		t.Fatalf("read back until EOF: %v (after %d of %d bytes)%s", err, len(back), len(bulk), e.diagnostics(t))
	}
	if !bytes.Equal(back, bulk) {
		t.Fatalf("read back %d bytes, want the %d written, intact", len(back), len(bulk))
	}
	// Through uloop every segment crossed ulo0 and uloopd, handed back
	// unchanged (see stack.classify): at least the three of the handshake.
	e.requireCrossed(t, before)
	e.requireGrew(t, before, "uloop_passthrough_packets_total", 3)
}
