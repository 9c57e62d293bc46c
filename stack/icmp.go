package stack

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
)

// echoResponder answers ICMP echo requests to any address of 127/8. The NIC
// is promiscuous, so each such address is a temporary one to gVisor, and its
// IPv4 code deliberately sends no echo reply for temporary addresses
// (network/ipv4/icmp.go). It has nothing to do with relaying flows: an echo
// request is answered in the stack, as lo's kernel answers it.
type echoResponder struct {
	gv      *stack.Stack
	metrics *Metrics
}

// handle is the per-stack default ICMPv4 handler: it sees every echo
// request that reached the transport layer after gVisor checked the IP
// header, options and ICMP checksum. It reports whether it took the packet.
func (e *echoResponder) handle(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	icmpHdr := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(icmpHdr) < header.ICMPv4MinimumSize || icmpHdr.Type() != header.ICMPv4Echo {
		return false
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	tos, _ := ip.TOS()
	local, remote := ip.DestinationAddress(), ip.SourceAddress()

	// The reply reuses the request's ICMP header and data, in a copy: the
	// request's buffer belongs to the caller.
	reply := stack.PayloadSince(pkt.TransportHeader())
	b := reply.AsSlice()
	h := header.ICMPv4(b)
	h.SetType(header.ICMPv4EchoReply)
	h.SetChecksum(0)
	h.SetChecksum(^checksum.Checksum(b, 0))

	if writeICMP(e.gv, e.metrics, local, remote, tos, reply) {
		e.metrics.ICMPEchoReplies.Add(1)
	}
	return true
}

// icmpQuoteMax is how much of an offending packet an ICMP error quotes:
// as much as keeps the error within 576 bytes, as Linux does (RFC 1812
// 4.3.2.3).
const icmpQuoteMax = 576 - header.IPv4MinimumSize - header.ICMPv4MinimumSize

// sendPortUnreachable answers pkt, a UDP datagram the relay refuses, with
// ICMP port unreachable from its destination, as the kernel does for a port
// with no socket; a connected client socket then sees ECONNREFUSED. gVisor
// sends none itself for a promiscuous NIC's temporary addresses.
func (r *relay) sendPortUnreachable(pkt *stack.PacketBuffer) {
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	quote := stack.PayloadSince(pkt.NetworkHeader())
	defer quote.Release()
	q := quote.AsSlice()
	if len(q) > icmpQuoteMax {
		q = q[:icmpQuoteMax]
	}
	msg := buffer.NewViewSize(header.ICMPv4MinimumSize + len(q))
	b := msg.AsSlice()
	h := header.ICMPv4(b)
	h.SetType(header.ICMPv4DstUnreachable)
	h.SetCode(header.ICMPv4PortUnreachable)
	copy(b[header.ICMPv4MinimumSize:], q)
	h.SetChecksum(^checksum.Checksum(b, 0))
	writeICMP(r.gv, r.metrics, ip.DestinationAddress(), ip.SourceAddress(), 0, msg)
}

// icmp6QuoteMax is how much of an offending packet an ICMPv6 error quotes:
// as much as keeps the error within the minimum IPv6 MTU (RFC 4443 2.4).
const icmp6QuoteMax = header.IPv6MinimumMTU - header.IPv6MinimumSize - header.ICMPv6ErrorHeaderSize

// sendPortUnreachable6 is sendPortUnreachable for IPv6: the error goes from
// the datagram's destination (S, the stack's address) to its source (K),
// quoting the datagram as the client's socket sent it (K:E -> S:P), which
// is what that socket matches it against.
func (r *relay) sendPortUnreachable6(pkt *stack.PacketBuffer) {
	ip := header.IPv6(pkt.NetworkHeader().Slice())
	quote := stack.PayloadSince(pkt.NetworkHeader())
	defer quote.Release()
	q := quote.AsSlice()
	if len(q) > icmp6QuoteMax {
		q = q[:icmp6QuoteMax]
	}
	msg := buffer.NewViewSize(header.ICMPv6ErrorHeaderSize + len(q))
	b := msg.AsSlice()
	h := header.ICMPv6(b)
	h.SetType(header.ICMPv6DstUnreachable)
	h.SetCode(header.ICMPv6PortUnreachable)
	copy(b[header.ICMPv6ErrorHeaderSize:], q)
	local, remote := ip.DestinationAddress(), ip.SourceAddress()
	h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: h, Src: local, Dst: remote}))
	writeICMP(r.gv, r.metrics, local, remote, 0, msg)
}

// writeICMP sends the ICMP (or, between IPv6 addresses, ICMPv6) message msg
// (which it takes) from local to remote through gv's TUN NIC for their
// family; spoofing lets local be any address of the prefix. A message that
// cannot be sent is counted in m.DroppedPackets.
func writeICMP(gv *stack.Stack, m *Metrics, local, remote tcpip.Address, tos uint8, msg *buffer.View) bool {
	transport := icmp.ProtocolNumber4
	if netProto(local) == header.IPv6ProtocolNumber {
		transport = icmp.ProtocolNumber6
	}
	route, err := gv.FindRoute(nicFor(local), local, remote, netProto(local), false)
	if err != nil {
		msg.Release()
		m.DroppedPackets.Add(1)
		return false
	}
	defer route.Release()
	out := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: int(route.MaxHeaderLength()),
		Payload:            buffer.MakeWithView(msg),
	})
	defer out.DecRef()
	out.TransportProtocolNumber = transport
	if err := route.WritePacket(stack.NetworkHeaderParams{
		Protocol: transport,
		TTL:      route.DefaultTTL(),
		TOS:      tos,
	}, out); err != nil {
		m.DroppedPackets.Add(1)
		return false
	}
	return true
}
