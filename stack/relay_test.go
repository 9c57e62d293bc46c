package stack

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

func addr4(a, b, c, d byte, port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{a, b, c, d}), Port: port}
}

// TestTCPRelay: a client and a server of the fake kernel talk through the
// relay, each seeing the other's true address, and the bytes arrive intact
// in both directions, including after a half-close.
func TestTCPRelay(t *testing.T) {
	for _, tt := range []struct {
		name   string
		listen tcpip.FullAddress
		dial   tcpip.FullAddress
	}{
		{"127.0.0.1", addr4(127, 0, 0, 1, 8000), addr4(127, 0, 0, 1, 8000)},
		{"127.5.5.5 via wildcard listener", tcpip.FullAddress{Port: 8001}, addr4(127, 5, 5, 5, 8001)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := newFakeKernel(t, 65535)
			s := newTestStack(t, k, Config{})
			ln, err := gonet.ListenTCP(k.gv, tt.listen, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			defer ln.Close()

			payload := make([]byte, 3<<20)
			rand.Read(payload)
			type result struct {
				got    []byte
				remote net.Addr
				local  net.Addr
				err    error
			}
			srv := make(chan result, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					srv <- result{err: err}
					return
				}
				defer c.Close()
				got, err := io.ReadAll(c) // until the client's half-close
				if err == nil {
					_, err = c.Write([]byte("bye"))
				}
				srv <- result{got: got, remote: c.RemoteAddr(), local: c.LocalAddr(), err: err}
			}()

			c, err := gonet.DialTCP(k.gv, tt.dial, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if _, err := c.Write(payload); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			reply, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			r := <-srv
			if r.err != nil {
				t.Fatalf("server: %v", r.err)
			}
			if !bytes.Equal(r.got, payload) {
				t.Errorf("server got %d bytes, want the %d sent", len(r.got), len(payload))
			}
			if string(reply) != "bye" {
				t.Errorf("client got %q after half-close, want %q", reply, "bye")
			}
			if r.remote.String() != c.LocalAddr().String() || r.local.String() != c.RemoteAddr().String() {
				t.Errorf("server sees %v -> %v, want %v -> %v", r.remote, r.local, c.LocalAddr(), c.RemoteAddr())
			}
			if got := s.Metrics().TCPConnections.Load(); got != 1 {
				t.Errorf("TCPConnections = %d, want 1", got)
			}
		})
	}
}

// TestTCPRefused: with no listener the client's connect fails with
// "connection refused" at once, not by timeout.
func TestTCPRefused(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{})
	start := time.Now()
	_, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 9), ipv4.ProtocolNumber)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("refused")) {
		t.Fatalf("dial error = %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v, want well under a second", d)
	}
	if got := s.Metrics().TCPRefused.Load(); got != 1 {
		t.Errorf("TCPRefused = %d, want 1", got)
	}
}

// TestTCPReset: an abortive close on one side reaches the other as a reset.
func TestTCPReset(t *testing.T) {
	k := newFakeKernel(t, 65535)
	newTestStack(t, k, Config{})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8002), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	// A raw endpoint rather than gonet.DialTCP, so the test can set
	// SO_LINGER as a kernel program would.
	var wq waiter.Queue
	ep, tcpErr := k.gv.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if tcpErr != nil {
		t.Fatalf("NewEndpoint: %v", tcpErr)
	}
	entry, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	if err := ep.Connect(addr4(127, 0, 0, 1, 8002)); err != nil {
		if _, ok := err.(*tcpip.ErrConnectStarted); !ok {
			t.Fatalf("connect: %v", err)
		}
		<-connected
	}
	wq.EventUnregister(&entry)
	sc := <-accepted
	if sc == nil {
		t.Fatal("accept failed")
	}
	defer sc.Close()
	// SO_LINGER 0 then close(2) sends a RST instead of a FIN.
	ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true, Timeout: 0})
	ep.Close()
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = sc.Read(make([]byte, 1))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("reset")) {
		t.Fatalf("server read error = %v, want connection reset", err)
	}
}

// TestUDPRelay: datagrams of every size keep their boundaries and the
// server sees the client's own address; at MTU 1500 the large ones cross
// as fragments, whose UDP checksum the link cannot leave partial.
func TestUDPRelay(t *testing.T) {
	for _, mtu := range []int{65535, 1500} {
		t.Run(fmt.Sprintf("mtu %d", mtu), func(t *testing.T) { testUDPRelay(t, mtu) })
	}
}

func testUDPRelay(t *testing.T, mtu int) {
	k := newFakeKernel(t, mtu)
	s := newTestStack(t, k, Config{})
	srv, cl := udpPair(t, k, 5300)
	buf := make([]byte, 65536)
	for _, size := range []int{1, 1400, 32768, 65507} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := cl.Write(msg); err != nil {
			t.Fatalf("client write %d: %v", size, err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := srv.ReadFrom(buf)
		if err != nil {
			t.Fatalf("server read %d: %v", size, err)
		}
		if n != size || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("server got %d bytes, want %d", n, size)
		}
		if from.String() != cl.LocalAddr().String() {
			t.Errorf("server sees sender %v, want %v", from, cl.LocalAddr())
		}
		if _, err := srv.WriteTo(msg, from); err != nil {
			t.Fatalf("server write: %v", err)
		}
		cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err = cl.Read(buf)
		if err != nil || n != size {
			t.Fatalf("client read: %d bytes, %v; want %d", n, err, size)
		}
	}
	if got := s.Metrics().UDPFlows.Load(); got != 1 {
		t.Errorf("UDPFlows = %d, want 1", got)
	}
}

// udpPair makes a UDP server on 127.0.0.1:port in the fake kernel and a
// client connected to it; both close when the test ends.
func udpPair(t *testing.T, k *fakeKernel, port uint16) (srv, cl *gonet.UDPConn) {
	t.Helper()
	addr := tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), Port: port}
	srv, err := gonet.DialUDP(k.gv, &addr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("server: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	cl, err = gonet.DialUDP(k.gv, nil, &addr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return srv, cl
}

// TestUDPIdleExpiry: an idle flow is closed after the timeout, and the same
// client socket then starts a new flow that works.
func TestUDPIdleExpiry(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{UDPIdleTimeout: 200 * time.Millisecond})
	srv, cl := udpPair(t, k, 5301)
	buf := make([]byte, 16)
	for i := 0; i < 2; i++ {
		if _, err := cl.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := srv.ReadFrom(buf); err != nil {
			t.Fatalf("round %d: server read: %v", i, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for s.Metrics().UDPFlowsActive.Load() != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := s.Metrics().UDPFlowsExpired.Load(); got != uint64(i+1) {
			t.Fatalf("round %d: UDPFlowsExpired = %d, want %d", i, got, i+1)
		}
	}
}

// TestEchoAnyAddress: echo requests to any 127/8 address are answered by
// the stack, with the addresses swapped and the data intact.
func TestEchoAnyAddress(t *testing.T) {
	s, dev, out := newCaptureStack(t, Config{})
	for _, dst := range [][4]byte{{127, 0, 0, 1}, {127, 9, 8, 7}} {
		data := bytes.Repeat([]byte("ping"), 1000)
		dev.Inject(echoRequest([4]byte{127, 0, 0, 1}, dst, 42, 7, data))
		select {
		case p := <-out:
			ip := header.IPv4(p)
			icmpHdr := header.ICMPv4(ip.Payload())
			if ip.SourceAddress() != tcpip.AddrFrom4(dst) || ip.DestinationAddress() != tcpip.AddrFrom4([4]byte{127, 0, 0, 1}) {
				t.Errorf("reply %v -> %v, want %v -> 127.0.0.1", ip.SourceAddress(), ip.DestinationAddress(), tcpip.AddrFrom4(dst))
			}
			if icmpHdr.Type() != header.ICMPv4EchoReply || icmpHdr.Ident() != 42 || icmpHdr.Sequence() != 7 {
				t.Errorf("reply type %d id %d seq %d, want echo reply id 42 seq 7", icmpHdr.Type(), icmpHdr.Ident(), icmpHdr.Sequence())
			}
			if !bytes.Equal(icmpHdr.Payload(), data) {
				t.Errorf("reply data differs from request")
			}
			if !ip.IsChecksumValid() {
				t.Errorf("reply IP checksum invalid")
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no echo reply for %v", dst)
		}
	}
	// The responder counts a reply once it is written: the test may
	// have read it a moment before.
	deadline := time.Now().Add(time.Second)
	for s.Metrics().ICMPEchoReplies.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := s.Metrics().ICMPEchoReplies.Load(); got != 2 {
		t.Errorf("ICMPEchoReplies = %d, want 2", got)
	}
}

// TestPassthrough: packets the stack has no business with (an unassigned
// protocol, an ICMP error, TCP from a socket to itself) go back to the
// kernel byte for byte.
func TestPassthrough(t *testing.T) {
	s, dev, out := newCaptureStack(t, Config{})
	unreach := ipv4Packet([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 1}, header.ICMPv4ProtocolNumber,
		append([]byte{byte(header.ICMPv4DstUnreachable), byte(header.ICMPv4PortUnreachable), 0, 0, 0, 0, 0, 0}, make([]byte, 28)...))
	for _, tt := range []struct {
		name string
		pkt  []byte
	}{
		{"protocol 253", ipv4Packet([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 2}, 253, []byte("experimental"))},
		{"ICMP port unreachable", unreach},
		{"TCP SYN to itself", tcpSYN([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 1}, 4000, 4000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev.Inject(tt.pkt)
			select {
			case p := <-out:
				if !bytes.Equal(p, tt.pkt) {
					t.Errorf("got % x, want % x", p, tt.pkt)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("packet not passed through")
			}
		})
	}
	if got := s.Metrics().PassthroughPackets.Load(); got != 3 {
		t.Errorf("PassthroughPackets = %d, want 3", got)
	}
}

// TestTCPToItselfOnly: only a segment whose source and destination are the
// same address and port is handed back; the same port on another address,
// or another port on the same address, is a flow the stack relays.
func TestTCPToItselfOnly(t *testing.T) {
	s, dev, out := newCaptureStack(t, Config{})
	for _, pkt := range [][]byte{
		tcpSYN([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 2}, 4000, 4000),
		tcpSYN([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 1}, 4000, 4001),
	} {
		dev.Inject(pkt)
		select {
		case p := <-out:
			// The relay dials the server from the client's tuple: a SYN
			// of its own, not the client's passed back.
			if bytes.Equal(p, pkt) {
				t.Errorf("SYN %v passed through unchanged, want it relayed", header.IPv4(pkt).DestinationAddress())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the relay sent nothing for a SYN")
		}
	}
	if got := s.Metrics().PassthroughPackets.Load(); got != 0 {
		t.Errorf("PassthroughPackets = %d, want 0", got)
	}
}

// TestUDPToItself: a socket connected to its own address reads back every
// datagram it sends, through the stack (one flow, looped on its endpoint).
func TestUDPToItself(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{})
	self := addr4(127, 0, 0, 1, 5302)
	c, err := gonet.DialUDP(k.gv, &self, &self, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("socket to itself: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for _, size := range []int{1, 1400, 65507} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write %d: %v", size, err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("read back: %d bytes, %v; want the %d sent", n, err, size)
		}
	}
	if got := s.Metrics().UDPFlows.Load(); got != 1 {
		t.Errorf("UDPFlows = %d, want 1", got)
	}
}

// TestIPv6LoopbackInStack: endpoints that live in the stack talk over [::1].
func TestIPv6LoopbackInStack(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{})
	echoServer(t, s.gv, tcpip.FullAddress{Addr: header.IPv6Loopback, Port: 80}, ipv6.ProtocolNumber)
	c, err := gonet.DialTCP(s.gv, tcpip.FullAddress{Addr: header.IPv6Loopback, Port: 80}, ipv6.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial [::1]:80: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello over ::1")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("hello over ::1"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "hello over ::1" {
		t.Errorf("got %q, want %q", got, "hello over ::1")
	}
	if c.RemoteAddr().String() != "[::1]:80" {
		t.Errorf("remote address %v, want [::1]:80", c.RemoteAddr())
	}
}

// TestMaxFlows: past the limit a new TCP connect is refused and a new UDP
// flow gets port unreachable, at once, while the flow already relayed
// keeps working.
func TestMaxFlows(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{MaxFlows: 1})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8003), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	first, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8003), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("first dial: %v", err)
	}
	defer first.Close()

	start := time.Now()
	if _, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8003), ipv4.ProtocolNumber); err == nil || !bytes.Contains([]byte(err.Error()), []byte("refused")) {
		t.Fatalf("second dial error = %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v, want at once", d)
	}

	first.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.Write([]byte("still here")); err != nil {
		t.Fatalf("first connection write: %v", err)
	}
	got := make([]byte, len("still here"))
	if _, err := io.ReadFull(first, got); err != nil || string(got) != "still here" {
		t.Fatalf("first connection echo: %q, %v", got, err)
	}
	if got := s.Metrics().FlowsRejected.Load(); got != 1 {
		t.Errorf("FlowsRejected = %d, want 1", got)
	}
}

// TestMaxFlowsUDP: past the limit the first datagram of a new UDP flow is
// answered with ICMP port unreachable that quotes it, as the kernel answers
// a datagram to a port with no socket.
func TestMaxFlowsUDP(t *testing.T) {
	s, dev, out := newCaptureStack(t, Config{MaxFlows: 1})
	datagram := func(srcPort uint16) []byte {
		u := make([]byte, header.UDPMinimumSize+4)
		header.UDP(u).Encode(&header.UDPFields{SrcPort: srcPort, DstPort: 5353, Length: uint16(len(u))})
		copy(u[header.UDPMinimumSize:], "ping")
		return ipv4Packet([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 1}, header.UDPProtocolNumber, u)
	}
	next := func() header.IPv4 {
		t.Helper()
		select {
		case p := <-out:
			return header.IPv4(p)
		case <-time.After(5 * time.Second):
			t.Fatal("nothing written to the device")
			return nil
		}
	}
	dev.Inject(datagram(40001))
	if relayed := next(); relayed.TransportProtocol() != header.UDPProtocolNumber {
		t.Fatalf("first flow: got protocol %d written, want the relayed UDP datagram", relayed.TransportProtocol())
	}
	second := datagram(40002)
	dev.Inject(second)
	ip := next()
	icmpHdr := header.ICMPv4(ip.Payload())
	if ip.TransportProtocol() != header.ICMPv4ProtocolNumber || icmpHdr.Type() != header.ICMPv4DstUnreachable || icmpHdr.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("second flow: got protocol %d type %d code %d, want ICMP port unreachable", ip.TransportProtocol(), icmpHdr.Type(), icmpHdr.Code())
	}
	if !bytes.Equal(icmpHdr.Payload(), second) {
		t.Errorf("ICMP quotes % x, want the refused datagram % x", icmpHdr.Payload(), second)
	}
	if got := s.Metrics().FlowsRejected.Load(); got != 1 {
		t.Errorf("FlowsRejected = %d, want 1", got)
	}
}

// TestFlows: Flows lists a live TCP connection and UDP flow with the
// client's and server's addresses and the bytes relayed each way.
func TestFlows(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8100), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		buf := make([]byte, 1000)
		io.ReadFull(c, buf)
		c.Write(buf[:10])
		accepted <- c
	}()
	c, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8100), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.Write(make([]byte, 1000))
	if _, err := io.ReadFull(c, make([]byte, 10)); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if sc := <-accepted; sc != nil {
		defer sc.Close()
	}
	srv, cl := udpPair(t, k, 5301)
	cl.Write(make([]byte, 7))
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := srv.ReadFrom(make([]byte, 100)); err != nil {
		t.Fatalf("udp server read: %v", err)
	}

	byProto := map[string]Flow{}
	for _, f := range s.Flows() {
		byProto[f.Proto] = f
	}
	tcpFlow, udpFlow := byProto["tcp"], byProto["udp"]
	if want := c.LocalAddr().String(); tcpFlow.Client.String() != want || tcpFlow.Server.String() != "127.0.0.1:8100" {
		t.Errorf("tcp flow %+v: want client %s, server 127.0.0.1:8100", tcpFlow, want)
	}
	if tcpFlow.ClientToServer != 1000 || tcpFlow.ServerToClient != 10 || tcpFlow.State != "ESTABLISHED" || time.Since(tcpFlow.Start) > time.Minute {
		t.Errorf("tcp flow %+v: want 1000 bytes to the server, 10 back, ESTABLISHED, started just now", tcpFlow)
	}
	if udpFlow.Client.String() != cl.LocalAddr().String() || udpFlow.ClientToServer != 7 || udpFlow.ServerToClient != 0 {
		t.Errorf("udp flow %+v: want client %v, 7 bytes to the server, none back", udpFlow, cl.LocalAddr())
	}
	if len(s.Flows()) != 2 {
		t.Errorf("Flows: got %v, want the two", s.Flows())
	}
}

// TestClosedFlowIsFreed: once a relayed TCP connection has closed, nothing
// the stack keeps holds on to the relay's flow. The mirrored endpoint,
// which sent the first FIN to the server, stays in TIME-WAIT for a second,
// and gVisor's TCP endpoint keeps the last reader given to its Write: a
// reader inside the flow kept the flow, and the client-facing endpoint with
// it, for as long as that.
func TestClosedFlowIsFreed(t *testing.T) {
	k := newFakeKernel(t, 65535)
	s := newTestStack(t, k, Config{})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8200), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c) // echo until the client's FIN, then close
	}()
	c, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8200), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	msg := make([]byte, 1000)
	rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatalf("read the echo: %v", err)
	}

	freed := make(chan struct{})
	mirror := func() tcpip.Endpoint { // the only flow; keeps no reference to it
		s.relay.mu.Lock()
		defer s.relay.mu.Unlock()
		for fl := range s.relay.flows {
			f := fl.(*tcpFlow)
			// A cleanup, not a finalizer: the flow points at itself
			// (its pumps run its own pipes), which keeps a finalizer
			// from ever running.
			runtime.AddCleanup(f, func(ch chan struct{}) { close(ch) }, freed)
			return f.b.ep
		}
		return nil
	}()
	if mirror == nil {
		t.Fatal("no relayed flow")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Flows()) > 0 || tcp.EndpointState(mirror.State()) != tcp.StateTimeWait {
		if time.Now().After(deadline) {
			t.Fatalf("flows %v, mirrored endpoint %v: want the flow closed and the endpoint in TIME-WAIT", s.Flows(), tcp.EndpointState(mirror.State()))
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; ; i++ {
		runtime.GC()
		select {
		case <-freed:
			if st := tcp.EndpointState(mirror.State()); st != tcp.StateTimeWait {
				t.Logf("the mirrored endpoint left TIME-WAIT (%v) before the flow was seen freed", st)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
		if i == 100 {
			t.Fatalf("the closed flow is still reachable after %d collections, with the mirrored endpoint %v", i, tcp.EndpointState(mirror.State()))
		}
	}
}
