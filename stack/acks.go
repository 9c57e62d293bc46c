package stack

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// ackHoldTime is how long the link endpoint may hold a pure ACK that the
// stack sends, waiting for a segment of the same flow to carry it instead.
// It is longer than a round trip through uloop (a request/response's reply
// usually comes within it, and the next request on a pooled connection), and
// far shorter than anything a kernel peer times: delayed ACK (40 ms), the
// minimum RTO (200 ms), and the tail loss probe with one segment in flight
// (at least 200 ms).
const ackHoldTime = 500 * time.Microsecond

// ackHolder gives the stack the delayed ACK that gVisor lacks. gVisor sends
// a pure ACK at the end of every batch of segments it receives (upstream
// gVisor issue 387), so a 1-byte request relayed to a server made the stack
// write an ACK to the client, and a 1-byte response an ACK to the server:
// two of a round trip's four TUN writes, each running the kernel's ACK
// processing in uloopd's thread, the first of them before the relay even
// got to forward the request.
//
// The holder keeps a pure ACK back instead, for at most ackHoldTime, one
// per flow. A later segment of the flow that acknowledges as much (the
// reply, the next request, a FIN) makes it redundant, and it is dropped;
// otherwise the timer sends it. A second pure ACK on a flow that has one
// held goes out at once (the held one first, unless the new one
// acknowledges more), so a bulk receiver still ACKs at least every other
// segment, as Linux's delayed ACK does, and duplicate ACKs all reach the
// sender. The ACK that completes a handshake the stack started is never
// held: a server that speaks first (SMTP, MySQL) would wait for it.
type ackHolder struct {
	write   func(tundev.VirtioNetHdr, [][]byte) error
	metrics *Metrics
	// hold is how long an ACK is held: ackHoldTime, longer in tests that
	// must not see the timer fire between two sends.
	hold time.Duration
	// n is len(flows), read without mu so that writes skip the lock when
	// nothing is held.
	n atomic.Int32

	mu sync.Mutex
	// flows are the flows with an ACK held or a handshake in progress.
	// +checklocks:mu
	flows map[flowID]*heldFlow
	// timer fires at timerAt, the earliest deadline in flows; nil when
	// flows is empty.
	// +checklocks:mu
	timer *time.Timer
	// +checklocks:mu
	timerAt time.Time
	// stopped is set by stop: nothing is held any more.
	// +checklocks:mu
	stopped bool
}

// flowID is a TCP flow as the stack sends it: source then destination.
type flowID struct {
	src, dst         tcpip.Address
	srcPort, dstPort uint16
}

// heldFlow is what the holder knows of one flow.
type heldFlow struct {
	deadline time.Time
	// synSent: the stack sent a SYN on this flow, so its next pure ACK
	// completes the handshake and goes out at once. No ACK is held then.
	synSent bool
	ack     seqnum.Value // acknowledgment number of the held ACK
	vnet    tundev.VirtioNetHdr
	pkt     []byte // a copy of the held ACK
}

func newACKHolder(write func(tundev.VirtioNetHdr, [][]byte) error, m *Metrics) *ackHolder {
	return &ackHolder{write: write, metrics: m, hold: ackHoldTime, flows: make(map[flowID]*heldFlow)}
}

// outSegment is what the holder reads from an outbound TCP segment.
type outSegment struct {
	id      flowID
	flags   header.TCPFlags
	ack     seqnum.Value
	payload int
}

// parseTCP reads pkt's TCP header; false if pkt is not an unfragmented
// IPv4 TCP segment.
func parseTCP(pkt [][]byte) (outSegment, bool) {
	// IPv6 segments are sent as they come: the version check keeps an IPv6
	// header from being read as an IPv4 one.
	if len(pkt) == 0 || len(pkt[0]) < header.IPv4MinimumSize || header.IPVersion(pkt[0]) != header.IPv4Version {
		return outSegment{}, false
	}
	ip := header.IPv4(pkt[0])
	hl := int(ip.HeaderLength())
	if ip.TransportProtocol() != header.TCPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 || hl < header.IPv4MinimumSize {
		return outSegment{}, false
	}
	// gVisor builds the IP and TCP headers in one view (the packet's
	// header prepend space); the payload, if any, follows in others.
	if len(pkt[0]) < hl+header.TCPMinimumSize {
		return outSegment{}, false
	}
	tcp := header.TCP(pkt[0][hl:])
	size := 0
	for _, v := range pkt {
		size += len(v)
	}
	return outSegment{
		id:      flowID{src: ip.SourceAddress(), dst: ip.DestinationAddress(), srcPort: tcp.SourcePort(), dstPort: tcp.DestinationPort()},
		flags:   tcp.Flags(),
		ack:     seqnum.Value(tcp.AckNumber()),
		payload: size - hl - int(tcp.DataOffset()),
	}, true
}

// send writes the packet pkt, or holds it if it is a pure ACK that a later
// segment may carry. An error is the device's.
func (h *ackHolder) send(vnet tundev.VirtioNetHdr, pkt [][]byte) error {
	seg, ok := parseTCP(pkt)
	if !ok {
		return h.write(vnet, pkt)
	}
	if seg.flags == header.TCPFlagAck && seg.payload == 0 {
		return h.sendACK(seg, vnet, pkt)
	}
	if seg.flags&header.TCPFlagSyn != 0 && seg.flags&header.TCPFlagAck == 0 {
		h.sawSYN(seg.id)
		return h.write(vnet, pkt)
	}
	if h.n.Load() == 0 {
		return h.write(vnet, pkt)
	}
	// Data, FIN or RST: it goes now; a held ACK it makes redundant is
	// dropped, any other goes first.
	h.mu.Lock()
	f := h.flows[seg.id]
	var earlier *heldFlow
	if f != nil && f.pkt != nil {
		h.remove(seg.id)
		if seg.flags&header.TCPFlagAck != 0 && !seg.ack.LessThan(f.ack) || seg.flags&header.TCPFlagRst != 0 {
			h.metrics.ACKsCoalesced.Add(1)
		} else {
			earlier = f
		}
	}
	h.mu.Unlock()
	if earlier != nil {
		h.write(earlier.vnet, [][]byte{earlier.pkt})
	}
	return h.write(vnet, pkt)
}

// sendACK holds the pure ACK seg, or writes it (after the held one) when
// the flow already has one held or is completing a handshake.
func (h *ackHolder) sendACK(seg outSegment, vnet tundev.VirtioNetHdr, pkt [][]byte) error {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return h.write(vnet, pkt)
	}
	f := h.flows[seg.id]
	switch {
	case f != nil && f.synSent:
		h.remove(seg.id)
		h.mu.Unlock()
		return h.write(vnet, pkt)
	case f != nil:
		// One held already: the new one goes now, and the held one too
		// unless the new one acknowledges more (it then says all the
		// held one did).
		h.remove(seg.id)
		h.mu.Unlock()
		if seg.ack.LessThanEq(f.ack) {
			h.write(f.vnet, [][]byte{f.pkt})
		} else {
			h.metrics.ACKsCoalesced.Add(1)
		}
		return h.write(vnet, pkt)
	}
	n := 0
	for _, v := range pkt {
		n += len(v)
	}
	cp := make([]byte, 0, n)
	for _, v := range pkt {
		cp = append(cp, v...)
	}
	h.add(seg.id, &heldFlow{deadline: time.Now().Add(h.hold), ack: seg.ack, vnet: vnet, pkt: cp})
	h.mu.Unlock()
	return nil
}

// sawSYN notes that the stack opened a connection on id: the ACK that
// completes its handshake must not wait.
func (h *ackHolder) sawSYN(id flowID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	if _, ok := h.flows[id]; ok {
		h.remove(id)
	}
	// The deadline only bounds how long the note lives if the connect
	// fails: the handshake's ACK normally comes well within it.
	h.add(id, &heldFlow{deadline: time.Now().Add(time.Second), synSent: true})
}

// add records f and arms the timer for its deadline if it is the earliest.
// +checklocks:h.mu
func (h *ackHolder) add(id flowID, f *heldFlow) {
	h.flows[id] = f
	h.n.Store(int32(len(h.flows)))
	switch {
	case h.timer == nil:
		h.timer = time.AfterFunc(time.Until(f.deadline), h.flushDue)
	case f.deadline.Before(h.timerAt):
		h.timer.Reset(time.Until(f.deadline))
	default:
		return
	}
	h.timerAt = f.deadline
}

// +checklocks:h.mu
func (h *ackHolder) remove(id flowID) {
	delete(h.flows, id)
	h.n.Store(int32(len(h.flows)))
}

// flushDue sends the ACKs whose time is up and re-arms the timer for the
// next deadline.
func (h *ackHolder) flushDue() {
	now := time.Now()
	var due []*heldFlow
	h.mu.Lock()
	h.timer = nil
	if h.stopped {
		h.mu.Unlock()
		return
	}
	var next time.Time
	for id, f := range h.flows {
		if !f.deadline.After(now) {
			h.remove(id)
			if f.pkt != nil {
				due = append(due, f)
			}
		} else if next.IsZero() || f.deadline.Before(next) {
			next = f.deadline
		}
	}
	if !next.IsZero() {
		h.timer, h.timerAt = time.AfterFunc(time.Until(next), h.flushDue), next
	}
	h.mu.Unlock()
	for _, f := range due {
		h.write(f.vnet, [][]byte{f.pkt})
	}
}

// stop drops what is held and holds nothing from then on. It runs when
// the stack closes, after the relay has reset every connection: a held ACK
// would only draw a RST from a kernel that no longer has the socket.
func (h *ackHolder) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	for id := range h.flows {
		h.remove(id)
	}
}
