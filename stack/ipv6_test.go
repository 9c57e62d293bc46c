package stack

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

// The addresses the socket hooks use (route.DefaultIPv6): the kernel's K
// and the stack's S.
var (
	prefix6 = tcpip.AddressWithPrefix{Address: tcpip.AddrFromSlice([]byte{0xfd, 0x75, 0x6c, 0x6f, 0x6f, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), PrefixLen: 64}
	kernel6 = tcpip.AddrFromSlice([]byte{0xfd, 0x75, 0x6c, 0x6f, 0x6f, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	stack6  = tcpip.AddrFromSlice([]byte{0xfd, 0x75, 0x6c, 0x6f, 0x6f, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	config6 = Config{IPv6: netip.MustParsePrefix("fd75:6c6f:6f70::/64")}
)

// TestRelay6: the fake kernel's client at K connects to S (where the hooks
// send ::1) and its server on K accepts the relayed connection from S with
// the client's port; TCP bytes and UDP datagrams up to 65,527 bytes (IPv6
// fragments, whose UDP checksum the stack must compute: the fake kernel
// checks it) arrive intact.
func TestRelay6(t *testing.T) {
	for _, mtu := range []int{65535, 1500} {
		t.Run(fmt.Sprintf("mtu %d", mtu), func(t *testing.T) {
			k := newFakeKernel(t, mtu)
			s := newTestStack(t, k, config6)

			ln, err := gonet.ListenTCP(k.gv, tcpip.FullAddress{Addr: kernel6, Port: 8000}, ipv6.ProtocolNumber)
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
				close(accepted)
			}()
			c, err := gonet.DialTCP(k.gv, tcpip.FullAddress{Addr: stack6, Port: 8000}, ipv6.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial [S]:8000: %v", err)
			}
			defer c.Close()
			sc := <-accepted
			if sc == nil {
				t.Fatal("accept failed")
			}
			defer sc.Close()
			client := c.LocalAddr().(*net.TCPAddr)
			if r := sc.RemoteAddr().(*net.TCPAddr); r.IP.String() != stack6.String() || r.Port != client.Port {
				t.Errorf("server sees peer %v, want [%v]:%d (S with the client's port)", r, stack6, client.Port)
			}
			msg := bytes.Repeat([]byte("six"), 1<<18)
			go func() { c.Write(msg); c.CloseWrite() }()
			got, err := io.ReadAll(sc)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("server read %d bytes, %v; want the %d sent", len(got), err, len(msg))
			}
			if n := s.Metrics().TCPConnections.Load(); n != 1 {
				t.Errorf("TCPConnections = %d, want 1", n)
			}

			srv, err := gonet.DialUDP(k.gv, &tcpip.FullAddress{Addr: kernel6, Port: 5300}, nil, ipv6.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			cl, err := gonet.DialUDP(k.gv, nil, &tcpip.FullAddress{Addr: stack6, Port: 5300}, ipv6.ProtocolNumber)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			buf := make([]byte, 70000)
			for _, size := range []int{1, 1400, 65527} {
				m := bytes.Repeat([]byte{byte(size)}, size)
				if _, err := cl.Write(m); err != nil {
					t.Fatalf("client write %d: %v", size, err)
				}
				srv.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := srv.ReadFrom(buf)
				if err != nil || !bytes.Equal(buf[:n], m) {
					t.Fatalf("server got %d bytes, %v; want the %d sent", n, err, size)
				}
				if _, err := srv.WriteTo(buf[:n], from); err != nil {
					t.Fatal(err)
				}
				cl.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := cl.Read(buf); err != nil || n != size {
					t.Fatalf("client read %d bytes, %v; want %d", n, err, size)
				}
			}
			if n := s.Metrics().UDPFlows.Load(); n != 1 {
				t.Errorf("UDPFlows = %d, want 1", n)
			}
		})
	}
}

// ipv6Packet builds an IPv6 packet from src to dst carrying payload as
// protocol proto.
func ipv6Packet(src, dst tcpip.Address, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+len(payload))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(payload)), TransportProtocol: proto, HopLimit: 64,
		SrcAddr: src, DstAddr: dst,
	})
	copy(b[header.IPv6MinimumSize:], payload)
	return b
}

func tcpSegment6(src, dst uint16) []byte {
	b := make([]byte, header.TCPMinimumSize)
	header.TCP(b).Encode(&header.TCPFields{SrcPort: src, DstPort: dst, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn})
	return b
}

func icmpv6(typ header.ICMPv6Type, body []byte) []byte {
	b := make([]byte, header.ICMPv6ErrorHeaderSize+len(body))
	header.ICMPv6(b).SetType(typ)
	copy(b[header.ICMPv6ErrorHeaderSize:], body)
	return b
}

func TestClassify6(t *testing.T) {
	udp := make([]byte, header.UDPMinimumSize)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want verdict
	}{
		{"tcp", ipv6Packet(kernel6, stack6, header.TCPProtocolNumber, tcpSegment6(40000, 80)), toStack},
		{"tcp-to-itself", ipv6Packet(kernel6, stack6, header.TCPProtocolNumber, tcpSegment6(8080, 8080)), swapBack},
		{"udp", ipv6Packet(kernel6, stack6, header.UDPProtocolNumber, udp), toStack},
		{"fragment", ipv6Packet(kernel6, stack6, tcpip.TransportProtocolNumber(header.IPv6FragmentHeader), make([]byte, 8)), toStack},
		{"echo-request", ipv6Packet(kernel6, stack6, header.ICMPv6ProtocolNumber, icmpv6(header.ICMPv6EchoRequest, nil)), toStack},
		{"port-unreachable", ipv6Packet(kernel6, stack6, header.ICMPv6ProtocolNumber, icmpv6(header.ICMPv6DstUnreachable, nil)), swapBack},
		{"router-solicitation", ipv6Packet(kernel6, stack6, header.ICMPv6ProtocolNumber, icmpv6(header.ICMPv6RouterSolicit, nil)), drop},
		{"hop-by-hop (MLD)", ipv6Packet(kernel6, stack6, 0, make([]byte, 8)), drop},
		{"truncated", ipv6Packet(kernel6, stack6, header.TCPProtocolNumber, nil)[:30], drop},
	} {
		if got := classify(tc.pkt); got != tc.want {
			t.Errorf("%s: classify = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSwapAddresses6: the kernel's port unreachable about the relay's
// datagram S:E -> K:P becomes the one the client's socket (K:E -> S:P)
// expects, with a checksum that is still right.
func TestSwapAddresses6(t *testing.T) {
	quoted := ipv6Packet(stack6, kernel6, header.UDPProtocolNumber, make([]byte, header.UDPMinimumSize))
	msg := icmpv6(header.ICMPv6DstUnreachable, quoted)
	pkt := ipv6Packet(kernel6, stack6, header.ICMPv6ProtocolNumber, msg)
	icmp := header.ICMPv6(pkt[header.IPv6MinimumSize:])
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: kernel6, Dst: stack6}))

	swapAddresses6(pkt)
	ip := header.IPv6(pkt)
	if ip.SourceAddress() != stack6 || ip.DestinationAddress() != kernel6 {
		t.Errorf("outer: %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), stack6, kernel6)
	}
	q := header.IPv6(pkt[header.IPv6MinimumSize+header.ICMPv6ErrorHeaderSize:])
	if q.SourceAddress() != kernel6 || q.DestinationAddress() != stack6 {
		t.Errorf("quoted: %v -> %v, want %v -> %v", q.SourceAddress(), q.DestinationAddress(), kernel6, stack6)
	}
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: stack6, Dst: kernel6})
	if got := icmp.Checksum(); got != want {
		t.Errorf("checksum after the swap: %#04x, want %#04x", got, want)
	}
}

// TestMirror: IPv4 dials the client's own tuple; IPv6 dials from the
// stack's address with the client's port to the kernel's address with the
// server's port.
func TestMirror(t *testing.T) {
	c4 := tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), Port: 40000}
	s4 := tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{127, 0, 0, 2}), Port: 80}
	if from, to := mirror(c4, s4); from.Addr != c4.Addr || from.Port != c4.Port || to.Addr != s4.Addr || to.Port != s4.Port || from.NIC != tunNIC {
		t.Errorf("IPv4: %+v -> %+v, want the client's own tuple on NIC %d", from, to, tunNIC)
	}
	c6 := tcpip.FullAddress{Addr: kernel6, Port: 40000}
	s6 := tcpip.FullAddress{Addr: stack6, Port: 80}
	if from, to := mirror(c6, s6); from.Addr != stack6 || from.Port != 40000 || to.Addr != kernel6 || to.Port != 80 || from.NIC != tun6NIC {
		t.Errorf("IPv6: %+v -> %+v, want [%v]:40000 -> [%v]:80 on NIC %d", from, to, stack6, kernel6, tun6NIC)
	}
	if selfAddressed(c6, s6) {
		t.Error("IPv6 flow with different ports counted as self-addressed")
	}
	if !selfAddressed(tcpip.FullAddress{Addr: kernel6, Port: 9}, tcpip.FullAddress{Addr: stack6, Port: 9}) {
		t.Error("IPv6 flow from port P to port P not counted as self-addressed")
	}
}
