package stack

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/uloop/uloop/impair"
	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Impairments act at two places, so that each direction of a relayed flow
// crosses one impaired hop, as a packet on a slow or lossy link would:
//
//   - packets the kernel sends into the stack (the link endpoint's reader):
//     towards the server on the client's leg, towards the client on the
//     server's leg. A packet lost there is one the kernel's TCP sent and
//     must retransmit; one delayed holds up only its own flow (impair.Line).
//     The stack's own packets back to the kernel (ACKs, relayed data) pass
//     unimpaired, or every byte would be impaired twice.
//   - echo replies the stack sends, which are the to-client half of a ping.
//
// Resets act on connections, in the relay (resetAfterBytes, armReset).

// maxDelayedBytes bounds what the delay line holds for all rules together;
// past it a delayed packet is dropped (and counted as Overflow), as a full
// queue would drop it.
const maxDelayedBytes = 64 << 20

// impairInbound applies the rules to a packet read from the device with
// virtio-net header h that is bound for the stack. It returns true if it
// took the packet (dropped, or delayed to be delivered later); false:
// deliver it now.
func (e *linkEndpoint) impairInbound(d stack.NetworkDispatcher, v *buffer.View, h tundev.VirtioNetHdr, rules []*impair.Rule) bool {
	p, ok := impair.ParsePacket(v.AsSlice())
	if !ok {
		return false
	}
	verdict, wait, rule := impair.Apply(rules, &p, time.Now())
	if verdict != impair.Pass {
		v.Release()
		return true
	}
	if wait <= 0 {
		return false
	}
	if !settleChecksums(v.AsSlice(), h) {
		e.metrics.DroppedPackets.Add(1)
		v.Release()
		return true
	}
	if !e.line.Schedule(p.FlowKey(), wait, p.Len, func() { e.deliverDelayed(d, v) }, v.Release) {
		rule.Counters.Overflow.Add(1)
		v.Release()
	}
	return true
}

// deliverDelayed delivers a delayed packet to the stack, from the delay
// line's goroutine; it takes ownership of v. It leaves rxTrusted alone: that
// is the reader's, set for the packet the reader delivers, and this packet
// may reach the NIC while the reader is between its store and its delivery.
// So the packet must be right whichever way gVisor takes it, checked or
// trusted: settleChecksums made it so before it was delayed.
func (e *linkEndpoint) deliverDelayed(d stack.NetworkDispatcher, v *buffer.View) {
	proto := header.IPv4ProtocolNumber
	if header.IPVersion(v.AsSlice()) == header.IPv6Version {
		proto = header.IPv6ProtocolNumber
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: splitHeaders(v)})
	d.DeliverNetworkPacket(proto, pb)
	pb.DecRef()
}

// settleChecksums makes the checksums of pkt, read with virtio-net header
// h, valid as bytes, so that the packet is right whether or not gVisor
// verifies it (see deliverDelayed): a partial checksum (NEEDS_CSUM, the
// kernel's own packets) is completed here; one the kernel verified
// (DATA_VALID) is already whole; any other packet (written by a raw or
// packet socket) is verified here as gVisor would, and false means it is
// bad and must be dropped. A fragment of such a packet cannot be verified
// alone and passes as it is. Only delayed packets pay for this.
func settleChecksums(pkt []byte, h tundev.VirtioNetHdr) bool {
	if h.Flags&tundev.VirtioNetHdrFNeedsCsum != 0 {
		start, field := int(h.CsumStart), int(h.CsumStart)+int(h.CsumOffset)
		if field+2 > len(pkt) || start > field {
			return false
		}
		sum := ^checksum.Checksum(pkt[start:], 0)
		if sum == 0 && isUDP(pkt) {
			sum = 0xffff // 0 means "no checksum" in UDP (RFC 768, 8200)
		}
		binary.BigEndian.PutUint16(pkt[field:], sum)
		return true
	}
	if h.ChecksumTrusted() {
		return true
	}
	if header.IPVersion(pkt) == header.IPv6Version {
		return validChecksum6(pkt)
	}
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) || !ip.IsChecksumValid() {
		return false
	}
	if ip.More() || ip.FragmentOffset() != 0 {
		return true
	}
	l4 := pkt[ip.HeaderLength():ip.TotalLength()]
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
	case header.UDPProtocolNumber:
		if len(l4) >= header.UDPMinimumSize && header.UDP(l4).Checksum() == 0 {
			return true
		}
	case header.ICMPv4ProtocolNumber:
		return checksum.Checksum(l4, 0) == 0xffff
	default:
		return true
	}
	pseudo := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	return checksum.Checksum(l4, pseudo) == 0xffff
}

// isUDP reports whether pkt, IPv4 or IPv6 (only packets ParseIPv6 takes:
// no extension headers), carries UDP.
func isUDP(pkt []byte) bool {
	if header.IPVersion(pkt) == header.IPv6Version {
		return len(pkt) >= header.IPv6MinimumSize && header.IPv6(pkt).TransportProtocol() == header.UDPProtocolNumber
	}
	return len(pkt) >= header.IPv4MinimumSize && header.IPv4(pkt).TransportProtocol() == header.UDPProtocolNumber
}

// validChecksum6 verifies the TCP or UDP checksum of an IPv6 packet that
// ParseIPv6 took (transport header right after the fixed one), as gVisor
// would; in IPv6 a UDP checksum is mandatory.
func validChecksum6(pkt []byte) bool {
	ip := header.IPv6(pkt)
	if !ip.IsValid(len(pkt)) {
		return false
	}
	l4 := pkt[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
	pseudo := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	return checksum.Checksum(l4, pseudo) == 0xffff
}

// impairOutbound applies the rules to a packet the stack writes, if it is
// an echo reply. True if it took the packet (dropped, or delayed: then it
// holds a reference until it writes it).
func (e *linkEndpoint) impairOutbound(pkt *stack.PacketBuffer, rules []*impair.Rule) bool {
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	th := pkt.TransportHeader().Slice()
	if len(th) == 0 {
		// The echo responder writes its reply as payload.
		th, _ = pkt.Data().PullUp(1)
	}
	if len(ip) < header.IPv4MinimumSize || ip.TransportProtocol() != header.ICMPv4ProtocolNumber ||
		len(th) < 1 || header.ICMPv4Type(th[0]) != header.ICMPv4EchoReply {
		return false
	}
	p := impair.Packet{
		Proto: impair.ICMP, EchoReply: true,
		Src: netip.AddrFrom4(ip.SourceAddress().As4()), Dst: netip.AddrFrom4(ip.DestinationAddress().As4()),
		Len: pkt.Size(),
	}
	verdict, wait, rule := impair.Apply(rules, &p, time.Now())
	if verdict != impair.Pass {
		return true
	}
	if wait <= 0 {
		return false
	}
	pkt.IncRef()
	write := func() {
		e.write(vnetHdr(pkt), pkt.AsSlices())
		pkt.DecRef()
	}
	if !e.line.Schedule(p.FlowKey(), wait, p.Len, write, pkt.DecRef) {
		rule.Counters.Overflow.Add(1)
		pkt.DecRef()
	}
	return true
}

// resetAfterBytes checks the flow against the rules' byte limits after n
// bytes read from src were counted. A rule != nil means its limit is
// reached: relay the first keep bytes of those n, then reset the flow.
func (f *tcpFlow) resetAfterBytes(rules []*impair.Rule, src conn, n int) (keep int, rule *impair.Rule) {
	dir := impair.ToClient
	if src == f.a {
		dir = impair.ToServer
	}
	for _, r := range impair.MatchFlow(rules, addrPort(f.server)) {
		if r.ResetBytes == 0 || !r.CountsDir(dir) {
			continue
		}
		var counted int64
		if r.CountsDir(impair.ToServer) {
			counted += int64(f.stats.bytes[0].Load())
		}
		if r.CountsDir(impair.ToClient) {
			counted += int64(f.stats.bytes[1].Load())
		}
		if counted < r.ResetBytes {
			continue
		}
		k := int(max(0, r.ResetBytes-(counted-int64(n))))
		if rule == nil || k < keep {
			keep, rule = k, r
		}
	}
	return keep, rule
}

// resetSettle is how long a flow reset for its byte count waits after
// relaying its last bytes, so that they reach the program before the RST
// does (an abort discards what the stack has not yet sent).
const resetSettle = 20 * time.Millisecond

// resetFlow resets f for rule, once: both programs get ECONNRESET.
func (r *relay) resetFlow(f *tcpFlow, rule *impair.Rule, settle time.Duration) {
	if !f.reset.CompareAndSwap(false, true) {
		return
	}
	time.Sleep(settle)
	rule.Counters.Resets.Add(1)
	r.log.Debug("tcp connection reset by impairment", "client", fmtAddr(f.client), "server", fmtAddr(f.server), "rule", rule.Spec)
	f.abort()
}

// armReset starts a timer for each rule with a time limit that matches f,
// which resets f when its limit has passed if the rule is still in force
// then. Run for each new connection and for all of them when the rules
// change; a timer of a rule since deleted does nothing.
func (r *relay) armReset(f *tcpFlow, rules []*impair.Rule) {
	for _, rule := range impair.MatchFlow(rules, addrPort(f.server)) {
		if rule.ResetAfter == 0 {
			continue
		}
		time.AfterFunc(max(0, time.Until(f.stats.start.Add(rule.ResetAfter))), func() {
			if slices.Contains(r.cfg.Impair.Active(), rule) && r.tracked(f) {
				r.resetFlow(f, rule, 0)
			}
		})
	}
}

// rearmResets arms the time limits of every TCP flow under the rules now
// in force.
func (r *relay) rearmResets() {
	rules := r.cfg.Impair.Active()
	if rules == nil {
		return
	}
	r.mu.Lock()
	var tcpFlows []*tcpFlow
	for f := range r.flows {
		if tf, ok := f.(*tcpFlow); ok {
			tcpFlows = append(tcpFlows, tf)
		}
	}
	r.mu.Unlock()
	for _, f := range tcpFlows {
		r.armReset(f, rules)
	}
}

func (r *relay) tracked(f flow) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.flows[f]
	return ok
}
