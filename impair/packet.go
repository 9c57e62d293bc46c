package impair

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Packet is what a rule looks at in an IPv4 or IPv6 packet.
type Packet struct {
	Proto            Proto // TCP, UDP or ICMP (echo only); AnyProto: other
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for ICMP and for fragments after the first
	// EchoReply is set for an ICMP echo reply, whose server (the address
	// that was pinged) is its source; an echo request's is its destination.
	EchoReply bool
	Len       int
}

// ParseIPv4 reads what rules match on from an IPv4 packet; false if it is
// not one, or no rule can match it (ICMP other than echo).
func ParseIPv4(pkt []byte) (Packet, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return Packet{}, false
	}
	hl := int(pkt[0]&0xf) * 4
	p := Packet{
		Src: netip.AddrFrom4([4]byte(pkt[12:16])),
		Dst: netip.AddrFrom4([4]byte(pkt[16:20])),
		Len: len(pkt),
	}
	first := binary.BigEndian.Uint16(pkt[6:8])&0x1fff == 0
	l4 := pkt[min(hl, len(pkt)):]
	switch pkt[9] {
	case 6:
		p.Proto = TCP
	case 17:
		p.Proto = UDP
	case 1:
		p.Proto = ICMP
		if first {
			if len(l4) < 1 {
				return Packet{}, false
			}
			switch l4[0] {
			case 8: // echo request
			case 0:
				p.EchoReply = true
			default:
				return Packet{}, false
			}
		}
		return p, true
	default:
		return Packet{}, false
	}
	if first && len(l4) >= 4 {
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return p, true
}

// ParsePacket reads what rules match on from an IPv4 or IPv6 packet (see
// ParseIPv4 and ParseIPv6).
func ParsePacket(pkt []byte) (Packet, bool) {
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return ParseIPv6(pkt)
	}
	return ParseIPv4(pkt)
}

// ParseIPv6 reads what rules match on from an IPv6 packet: TCP and UDP
// right after the fixed header, which is how the kernel sends them (::1
// traffic steered into the device; see the sockhook package). Anything
// else (extension headers, fragments, ICMPv6, which nothing steers) is
// false: no rule acts on it.
func ParseIPv6(pkt []byte) (Packet, bool) {
	if len(pkt) < 40 || pkt[0]>>4 != 6 {
		return Packet{}, false
	}
	p := Packet{
		Src: netip.AddrFrom16([16]byte(pkt[8:24])),
		Dst: netip.AddrFrom16([16]byte(pkt[24:40])),
		Len: len(pkt),
	}
	switch pkt[6] {
	case 6:
		p.Proto = TCP
	case 17:
		p.Proto = UDP
	default:
		return Packet{}, false
	}
	if l4 := pkt[40:]; len(l4) >= 4 {
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return p, true
}

// FlowKey hashes the packet's addresses, ports and protocol: packets with
// the same key keep their order through delays.
func (p *Packet) FlowKey() uint32 {
	h := uint32(2166136261)
	mix := func(b byte) { h = (h ^ uint32(b)) * 16777619 }
	for _, b := range p.Src.AsSlice() {
		mix(b)
	}
	for _, b := range p.Dst.AsSlice() {
		mix(b)
	}
	mix(byte(p.SrcPort >> 8))
	mix(byte(p.SrcPort))
	mix(byte(p.DstPort >> 8))
	mix(byte(p.DstPort))
	mix(byte(p.Proto))
	return h
}

// matchesServer reports whether addr:port is a server the rule names.
func (r *Rule) matchesServer(addr netip.Addr, port uint16) bool {
	if r.PortLo != 0 && (port < r.PortLo || port > r.PortHi) {
		return false
	}
	if r.AddrLo.IsValid() && (addr.Less(r.AddrLo) || r.AddrHi.Less(addr)) {
		return false
	}
	return true
}

// Match returns the first rule that acts on p's packets, and p's
// direction; nil if none.
func Match(rules []*Rule, p *Packet) (*Rule, Dir) {
	for _, r := range rules {
		if !r.PacketActions() {
			continue
		}
		if d := r.direction(p); d != Both {
			return r, d
		}
	}
	return nil, Both
}

// Apply applies every rule that matches p, in order, at now: a packet
// dropped by one goes no further; the waits of the others add up (a rule
// added for a port that already has one acts too, rather than hide behind
// it). by is the rule that dropped the packet, or the last that delayed
// it; nil if none acted.
func Apply(rules []*Rule, p *Packet, now time.Time) (v Verdict, wait time.Duration, by *Rule) {
	for _, r := range rules {
		if !r.PacketActions() {
			continue
		}
		d := r.direction(p)
		if d == Both {
			continue
		}
		rv, w := r.Decide(d, p.Len, now)
		if rv != Pass {
			return rv, 0, r
		}
		if w > 0 {
			wait += w
			by = r
		}
	}
	return Pass, wait, by
}

// direction is p's direction under r, or Both if r does not match p.
func (r *Rule) direction(p *Packet) Dir {
	if r.Proto != AnyProto && r.Proto != p.Proto {
		return Both
	}
	var d Dir
	switch {
	case p.Proto == ICMP:
		if r.PortLo != 0 {
			return Both
		}
		d = ToServer
		server := p.Dst
		if p.EchoReply {
			d, server = ToClient, p.Src
		}
		if !r.matchesServer(server, 0) {
			return Both
		}
	case r.matchesServer(p.Dst, p.DstPort):
		d = ToServer
	case r.matchesServer(p.Src, p.SrcPort):
		d = ToClient
	default:
		return Both
	}
	if r.Dir != Both && r.Dir != d {
		return Both
	}
	return d
}

// MatchFlow returns the rules that reset TCP connections to server.
func MatchFlow(rules []*Rule, server netip.AddrPort) []*Rule {
	var found []*Rule
	for _, r := range rules {
		if r.Proto == TCP && (r.ResetBytes > 0 || r.ResetAfter > 0) && r.matchesServer(server.Addr(), server.Port()) {
			found = append(found, r)
		}
	}
	return found
}

// CountsDir reports whether the rule's byte limit counts bytes moving in
// direction d.
func (r *Rule) CountsDir(d Dir) bool { return r.Dir == Both || r.Dir == d }

// Verdict is what a rule does to one packet.
type Verdict uint8

const (
	Pass       Verdict = iota // deliver, after the returned wait
	Lost                      // dropped by loss=
	RateDrop                  // dropped: it would wait longer than queue=
	Blackholed                // dropped by blackhole
)

// Decide decides what happens to a packet of size bytes moving in
// direction d (not Both) at now, and counts it. For Pass it returns how
// long the packet waits: its turn under the rate limit, plus the delay and
// its jitter.
func (r *Rule) Decide(d Dir, size int, now time.Time) (Verdict, time.Duration) {
	c := &r.Counters
	c.Packets.Add(1)
	c.Bytes.Add(uint64(size))
	if r.Blackhole {
		c.Blackholed.Add(1)
		return Blackholed, 0
	}
	st := &r.state[0]
	if d == ToClient {
		st = &r.state[1]
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if r.Loss > 0 && st.rnd.Float64() < r.Loss {
		c.Lost.Add(1)
		return Lost, 0
	}
	var wait time.Duration
	if r.Rate > 0 {
		// GCRA, the virtual-time form of a token bucket: a packet may
		// leave when the debt ahead of it is within the burst. A packet
		// larger than the burst still passes (on debt), so a 64 KiB
		// segment is never stuck behind a small burst.
		tau := time.Duration(float64(r.Burst) / r.Rate * float64(time.Second))
		tat := st.tat
		if tat.Before(now) {
			tat = now
		}
		leave := tat.Add(-tau)
		if leave.Before(now) {
			leave = now
		}
		wait = leave.Sub(now)
		if wait > r.Queue {
			c.RateDropped.Add(1)
			return RateDrop, 0
		}
		st.tat = tat.Add(time.Duration(float64(size) / r.Rate * float64(time.Second)))
	}
	if r.Delay > 0 {
		wait += r.Delay
		if r.Jitter > 0 {
			// Uniform in [-1, 1], correlated with the previous draw as
			// netem correlates its delay.
			j := 2*st.rnd.Float64() - 1
			j = (1-r.Correlation)*j + r.Correlation*st.lastJitter
			st.lastJitter = j
			wait += time.Duration(j * float64(r.Jitter))
		}
	}
	if wait > 0 {
		c.Delayed.Add(1)
	}
	return Pass, wait
}
