package stack

import (
	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// IPv6 through the TUN device.
//
// Linux never lets ::1 leave lo (RFC 4291 2.5.3), so programs' ::1 traffic
// reaches the device under other addresses: socket hooks (package sockhook)
// rewrite a connect or send to [::1]:P into one to [S]:P, where S is the
// stack's address in a /64 routed to the device, and the kernel sends it
// from its own address K on the device (K:E -> S:P). The relay then dials
// the server from S:E to K:P: K is the only address of the prefix that is
// local to the kernel, so the server's socket must be reached there. Both
// kernel sockets see K and S, which the hooks show as ::1, so the programs
// see ::1:E and ::1:P on both sides, as on lo. See mirror.

// tun6NIC is the stack's NIC for IPv6 on the TUN device. It shares the
// device with tunNIC (one reader, one writer) but not its checksum offload:
// see link6.
const tun6NIC tcpip.NICID = 3

// link6 is the IPv6 face of a linkEndpoint: the same device and reader,
// attached to a NIC of its own. Its one difference is that gVisor computes
// every TCP and UDP checksum except those of GSO segments (which the kernel
// completes, as for IPv4): a UDP datagram larger than the MTU leaves as
// fragments, and no fragment can carry a partial checksum of the whole
// datagram, while IPv6, unlike IPv4, forbids a UDP checksum of 0 (RFC 8200
// 8.1), so the kernel would drop every large datagram.
type link6 struct{ *linkEndpoint }

// Capabilities implements stack.LinkEndpoint.Capabilities: no TX checksum
// offload (see link6); RX checksum offload per packet, as the
// linkEndpoint's (the reader sets rxTrusted before each delivery).
func (l link6) Capabilities() stack.LinkEndpointCapabilities {
	if l.rxTrusted.Load() {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

// Attach implements stack.LinkEndpoint.Attach: the reader hands IPv6
// packets to d from now on.
func (l link6) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.v6.Store(nil)
		return
	}
	l.v6.Store(&d)
}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (l link6) IsAttached() bool { return l.v6.Load() != nil }

// Wait and Close belong to the linkEndpoint, which tunNIC owns.
func (link6) Wait()  {}
func (link6) Close() {}

// WritePackets implements stack.LinkEndpoint.WritePackets: as the
// linkEndpoint's, except that only GSO segments carry a partial checksum.
func (l link6) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return l.writePackets(pkts, func(pkt *stack.PacketBuffer) tundev.VirtioNetHdr {
		if pkt.GSOOptions.Type == stack.GSONone {
			return tundev.VirtioNetHdr{}
		}
		return vnetHdr(pkt)
	})
}

// dispatcher6 returns the IPv6 NIC's dispatcher, nil if there is none.
func (e *linkEndpoint) dispatcher6() stack.NetworkDispatcher {
	if d := e.v6.Load(); d != nil {
		return *d
	}
	return nil
}

// classify6 decides where an IPv6 packet read from the device goes: TCP,
// UDP, fragments (of large UDP datagrams, which the stack reassembles) and
// echo requests to the stack; ICMPv6 errors, and TCP from a socket to its
// own port, back to the kernel with their addresses swapped (see
// swapAddresses6); the rest (neighbour discovery, MLD, extension headers
// the kernel sends on its own account) is dropped.
func classify6(pkt []byte) verdict {
	if len(pkt) < header.IPv6MinimumSize {
		return drop
	}
	ip := header.IPv6(pkt)
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		// A socket connected to its own port (bound to [::]:P, connected
		// to [::1]:P): K:P -> S:P. On lo it is its own peer; here the
		// stack's two ends of the flow would have one tuple. Written back
		// as S:P -> K:P, each segment reaches the socket as its peer's,
		// and the kernel does what it does on lo (see classify for IPv4).
		if len(pkt) >= header.IPv6MinimumSize+4 {
			tcp := header.TCP(pkt[header.IPv6MinimumSize:])
			if tcp.SourcePort() == tcp.DestinationPort() {
				return swapBack
			}
		}
		return toStack
	case header.UDPProtocolNumber, tcpip.TransportProtocolNumber(header.IPv6FragmentHeader):
		return toStack
	case header.ICMPv6ProtocolNumber:
		if len(pkt) < header.IPv6MinimumSize+header.ICMPv6MinimumSize {
			return drop
		}
		switch t := header.ICMPv6(pkt[header.IPv6MinimumSize:]).Type(); {
		case t == header.ICMPv6EchoRequest:
			return toStack
		case t.IsErrorType():
			return swapBack
		}
	}
	return drop
}

// swapAddresses6 turns an ICMPv6 error the kernel sent about a packet of
// the relay's mirrored flow into the error the client's socket expects, in
// place. The relay's endpoint B sends S:E -> K:P where the client sent
// K:E -> S:P (see mirror), so the kernel's port unreachable goes K -> S
// quoting S:E -> K:P; the client's socket wants S -> K quoting K:E -> S:P.
// Swapping the source and destination of both the outer and the quoted
// header does it, and leaves the ICMPv6 checksum right: its pseudo-header
// and message hold the same 16-bit words in another order. For any other
// packet (TCP to itself) only the outer header is swapped, which leaves
// the transport checksum right for the same reason.
func swapAddresses6(pkt []byte) {
	swap := func(ip header.IPv6) {
		src, dst := ip.SourceAddress(), ip.DestinationAddress()
		ip.SetSourceAddress(dst)
		ip.SetDestinationAddress(src)
	}
	ip := header.IPv6(pkt)
	swap(ip)
	if ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		return
	}
	quoted := header.IPv6MinimumSize + header.ICMPv6ErrorHeaderSize
	if len(pkt) >= quoted+header.IPv6MinimumSize {
		swap(header.IPv6(pkt[quoted:]))
	}
}

// headersLen6 is headersLen for IPv6: the fixed header and the transport
// header that directly follows it, if any.
func headersLen6(pkt []byte) int {
	n := header.IPv6MinimumSize
	if len(pkt) < n {
		return n
	}
	switch header.IPv6(pkt).TransportProtocol() {
	case header.TCPProtocolNumber:
		if len(pkt) >= n+header.TCPMinimumSize {
			n += int(header.TCP(pkt[n:]).DataOffset())
		}
	case header.UDPProtocolNumber:
		n += header.UDPMinimumSize
	case header.ICMPv6ProtocolNumber:
		n += header.ICMPv6MinimumSize
	}
	return n
}

// nicFor returns the NIC that carries addr's family.
func nicFor(addr tcpip.Address) tcpip.NICID {
	if addr.Len() == header.IPv6AddressSize {
		return tun6NIC
	}
	return tunNIC
}

// netProto returns addr's network protocol.
func netProto(addr tcpip.Address) tcpip.NetworkProtocolNumber {
	if addr.Len() == header.IPv6AddressSize {
		return header.IPv6ProtocolNumber
	}
	return header.IPv4ProtocolNumber
}

// mirror returns the tuple the relay dials for a flow the stack accepted
// from client to server: from and to are endpoint B's local and remote
// addresses.
//
// IPv4: the client's own tuple. The kernel treats all of 127/8 as its own,
// so B can come from the client's address and port and reach the server's,
// and the server's accepted socket is the mirror image of the client's, as
// on lo.
//
// IPv6: the client is the kernel's address K on the device and the server
// the stack's address S (the hooks' rewrite of ::1), and only K is local to
// the kernel. So B comes from S with the client's port and reaches the
// server at K with the server's port: the server sees the client's port,
// and the hooks show both addresses as ::1.
func mirror(client, server tcpip.FullAddress) (from, to tcpip.FullAddress) {
	nic := nicFor(server.Addr)
	if nic == tunNIC {
		return tcpip.FullAddress{NIC: nic, Addr: client.Addr, Port: client.Port},
			tcpip.FullAddress{NIC: nic, Addr: server.Addr, Port: server.Port}
	}
	return tcpip.FullAddress{NIC: nic, Addr: server.Addr, Port: client.Port},
		tcpip.FullAddress{NIC: nic, Addr: client.Addr, Port: server.Port}
}

// selfAddressed reports whether the mirrored tuple of a flow is the flow's
// own (A's local and remote are B's): a socket sending to itself.
func selfAddressed(client, server tcpip.FullAddress) bool {
	from, to := mirror(client, server)
	return from.Addr == server.Addr && from.Port == server.Port && to.Addr == client.Addr && to.Port == client.Port
}
