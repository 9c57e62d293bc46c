package stack

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
)

// handleEcho answers ICMP echo requests to any address of 127/8. The NIC is
// promiscuous, so each such address is a temporary one to gVisor, and its
// IPv4 code deliberately sends no echo reply for temporary addresses
// (network/ipv4/icmp.go); as the per-stack default ICMP handler this sees
// every echo request that reached the transport layer after gVisor checked
// the IP header, options and ICMP checksum. It reports whether it took the
// packet.
func (r *relay) handleEcho(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
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

	route, err := r.gv.FindRoute(TUNNIC, local, remote, ipv4.ProtocolNumber, false)
	if err != nil {
		reply.Release()
		r.metrics.DroppedPackets.Add(1)
		return true
	}
	defer route.Release()
	out := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: int(route.MaxHeaderLength()),
		Payload:            buffer.MakeWithView(reply),
	})
	defer out.DecRef()
	out.TransportProtocolNumber = icmp.ProtocolNumber4
	if err := route.WritePacket(stack.NetworkHeaderParams{
		Protocol: icmp.ProtocolNumber4,
		TTL:      route.DefaultTTL(),
		TOS:      tos,
	}, out); err != nil {
		r.metrics.DroppedPackets.Add(1)
		return true
	}
	r.metrics.ICMPEchoReplies.Add(1)
	return true
}
