package stack

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/uloop/uloop/impair"
	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// copyBelow is the packet size under which an inbound packet is copied into a
// right-sized buffer instead of being handed to gVisor in the 64 KiB buffer
// it was read into. Without it, a stream of small segments held in a receive
// queue would pin 64 KiB each; copying a packet this small costs less than
// the rest of its trip through the stack.
const copyBelow = buffer.MaxChunkSize / 4

// linkEndpoint joins a tundev.Device to a gVisor stack. Its reader goroutine
// reads batches of IPv4 packets from the device and delivers them to the
// stack, or writes them straight back when the stack has no business with
// them (see classify); WritePackets writes the stack's packets to the device.
//
// Buffer ownership: the reader reads each packet into a *buffer.View of its
// own and gives that view to the PacketBuffer it delivers (no copy); it
// DecRefs the PacketBuffer after delivery, and gVisor keeps its own
// references for as long as it holds the data. WritePackets only borrows
// the packets it is given: their views go to the device's writev, and their
// owner (the stack) DecRefs them after the call.
type linkEndpoint struct {
	dev     tundev.Device
	mtu     uint32
	metrics *Metrics
	// gso says whether SupportedGSO offers host GSO; set before Attach.
	gso bool
	// acks holds the stack's pure ACKs briefly (see ackHolder).
	acks *ackHolder
	// udp writes a UDP pump's datagrams as UDP GSO packets (see udpGSO);
	// nil without GSO or if the device cannot take them. Set before Attach.
	udp *udpGSO
	// rxTrusted is whether the packet the reader is delivering has
	// checksums the kernel vouched for (see Capabilities).
	rxTrusted atomic.Bool
	// impair holds the impairment rules (nil: none ever), line the
	// packets they delay (see impairInbound).
	impair *impair.Table
	line   *impair.Line

	// done is closed when the reader goroutine exits.
	done chan struct{}

	mu sync.Mutex
	// dispatcher is the stack side; nil until Attach.
	// +checklocks:mu
	dispatcher stack.NetworkDispatcher
	// started is set when Attach starts the reader.
	// +checklocks:mu
	started bool
	// closed is set by Close.
	// +checklocks:mu
	closed bool
	// readErr is why the reader stopped, if not because of Close.
	// +checklocks:mu
	readErr error
	// v6 is the dispatcher of the stack's IPv6 NIC, set when that NIC
	// attaches (see link6); nil while IPv6 is off.
	v6 atomic.Pointer[stack.NetworkDispatcher]
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

// newLinkEndpoint returns an endpoint for dev. The reader starts on Attach.
func newLinkEndpoint(dev tundev.Device, m *Metrics) *linkEndpoint {
	e := &linkEndpoint{dev: dev, mtu: uint32(dev.MTU()), metrics: m, gso: true, done: make(chan struct{})}
	e.acks = newACKHolder(e.write, m)
	e.line = impair.NewLine(maxDelayedBytes)
	return e
}

// Done is closed when the reader goroutine has stopped, after Close or
// because the device failed (for example, it was deleted); Err says why.
func (e *linkEndpoint) Done() <-chan struct{} { return e.done }

// Err is the error that stopped the reader, or nil if it was stopped by
// Close or is still running.
func (e *linkEndpoint) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.readErr
}

// MTU implements stack.LinkEndpoint.MTU.
func (e *linkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.LinkEndpoint.SetMTU. The device's MTU is fixed.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength. A TUN
// device carries bare IP packets.
func (*linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.LinkAddress.
func (*linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress.
func (*linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.Capabilities.
//
// TX checksum offload: gVisor leaves TCP and UDP checksums to the link, and
// vnetHdr hands them to the kernel as partial (CHECKSUM_PARTIAL), which
// local delivery trusts without summing the payload.
//
// RX checksum offload, per packet: gVisor's NIC reads the capabilities for
// every packet it is handed (nic.DeliverNetworkPacket sets the packet's
// RXChecksumValidated from them), and nothing else in the stack looks at
// the RX bit. So the reader sets rxTrusted just before it delivers each
// packet, from what the kernel said about it (tundev.VirtioNetHdr's
// ChecksumTrusted): a packet the kernel built itself, whose transport
// checksum it left partial, is not checksummed at all, while one written by
// a raw or packet socket is verified by gVisor as before, and a bad one
// becomes a counted drop, as kernel lo would drop it. This works because
// one goroutine delivers; TestTrustedChecksum fails if a gVisor update
// stops reading the capabilities per packet.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.rxTrusted.Load() {
		return stack.CapabilityTXChecksumOffload | stack.CapabilityRXChecksumOffload
	}
	return stack.CapabilityTXChecksumOffload
}

// SupportedGSO implements stack.GSOEndpoint.SupportedGSO. With host GSO,
// gVisor's TCP hands over segments of up to GSOMaxSize bytes carrying only
// the pseudo-header checksum, and the virtio-net header tells the kernel so
// (CHECKSUM_PARTIAL). For local delivery the kernel then neither checksums
// nor segments them: no one computes a checksum over the payload at all.
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO {
	if !e.gso {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

// GSOMaxSize implements stack.GSOEndpoint.GSOMaxSize: the largest IPv4
// packet, which is also what an skb from a TUN write may hold.
func (*linkEndpoint) GSOMaxSize() uint32 { return maxIPv4PacketSize }

// maxIPv4PacketSize is the largest IPv4 packet: TotalLength is 16 bits.
const maxIPv4PacketSize = 1<<16 - 1

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.AddHeader.
func (*linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.ParseHeader.
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction.
func (*linkEndpoint) SetOnCloseAction(func()) {}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dispatcher != nil
}

// Attach implements stack.LinkEndpoint.Attach. The first attach starts the
// reader goroutine; detaching (nil) leaves it to Close to stop.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d != nil && !e.started && !e.closed {
		e.started = true
		go e.readLoop(d)
	}
}

// Wait implements stack.LinkEndpoint.Wait.
func (e *linkEndpoint) Wait() {
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	if started {
		<-e.done
	}
}

// Close implements stack.LinkEndpoint.Close: it closes the device, which
// makes the reader's blocked Read return.
func (e *linkEndpoint) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	e.mu.Unlock()
	e.acks.stop()
	e.line.Close()
	e.dev.Close()
}

// readLoop reads batches from the device until it fails or is closed.
func (e *linkEndpoint) readLoop(d stack.NetworkDispatcher) {
	defer close(e.done)
	batch := e.dev.BatchSize()
	views := make([]*buffer.View, batch)
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	hdrs := make([]tundev.VirtioNetHdr, batch)
	fill := func(i int) {
		views[i] = buffer.NewViewSize(tundev.SlotSize(i, int(e.mtu)))
		bufs[i] = views[i].AsSlice()
	}
	for i := range views {
		fill(i)
	}
	defer func() {
		for _, v := range views {
			v.Release()
		}
	}()
	// Under a flood the device never runs dry and this loop never blocks.
	// With a single P (uloopd's default on two cores) it would then starve
	// the relay goroutines that drain what it delivers until the scheduler
	// preempts it, and gVisor would drop nearly everything at full receive
	// buffers (UDP received fell to 2% of lo's); so it yields after each
	// batch. With more Ps the relay runs beside it and yielding only moves
	// the reader between Ps.
	yield := runtime.GOMAXPROCS(0) == 1
	// queued counts the reads in a row that returned a datagram without
	// waiting for it; a burst starts at need of them.
	queued, need := 0, burstAfter
	for {
		if yield {
			runtime.Gosched()
		}
		n, err := e.dev.Read(bufs, sizes, hdrs, 0)
		if n == 1 && isUDP(bufs[0][:sizes[0]]) && !e.dev.ReadWaited() {
			queued++
		} else {
			queued = 0
		}
		if !e.deliverRead(d, n, err, views, sizes, hdrs, fill) {
			return
		}
		if queued < need {
			continue
		}
		// Datagrams in a row were already queued when the reader asked:
		// a flood, perhaps. Take the datagrams queued behind them too
		// before the pumps run, so that each pump drains several at
		// once. Only for UDP: a burst of TCP segments is acknowledged
		// with one ACK, which the ACK holder then keeps back. And a
		// burst that finds nothing more doubles the streak the next
		// one waits for: the look costs a read that finds the device
		// empty, and requests and replies between fast peers are often
		// queued by the time the reader asks, one at a time.
		queued = 0
		for got, bytes := 1, sizes[0]; got < readBurst && bytes < readBurstBytes; {
			n, err := e.dev.TryRead(bufs, sizes, hdrs, 0)
			if n == 0 && err == nil {
				if got == 1 {
					need = min(2*need, burstAfterMax)
				}
				break
			}
			need = burstAfter
			more := n == 1 && isUDP(bufs[0][:sizes[0]])
			if n > 0 {
				got, bytes = got+1, bytes+sizes[0]
			}
			if !e.deliverRead(d, n, err, views, sizes, hdrs, fill) {
				return
			}
			if !more {
				break
			}
		}
	}
}

// readBurst and readBurstBytes bound the datagrams the reader takes in one
// burst: a pump relays them together, and the other goroutines wait no
// longer than about 16 small reads.
const (
	readBurst      = 16
	readBurstBytes = 64 << 10
	// burstAfter is the streak of datagrams found queued that starts a
	// burst; after bursts that found nothing, up to burstAfterMax.
	burstAfter    = 2
	burstAfterMax = 64
)

// deliverRead hands the n packets a read put in views (their sizes and
// headers beside them) to the stack, refilling the views it gave away;
// false if err ends the reader.
func (e *linkEndpoint) deliverRead(d stack.NetworkDispatcher, n int, err error, views []*buffer.View, sizes []int, hdrs []tundev.VirtioNetHdr, fill func(int)) bool {
	for i := 0; i < n; i++ {
		if sizes[i] < copyBelow {
			// Hand over a tight copy and keep the big buffer.
			e.deliver(d, buffer.NewViewWithData(views[i].AsSlice()[:sizes[i]]), hdrs[i])
			continue
		}
		views[i].CapLength(sizes[i])
		e.deliver(d, views[i], hdrs[i])
		fill(i)
	}
	switch {
	case errors.Is(err, tundev.ErrTooManySegments) || errors.Is(err, tundev.ErrDropped):
		// A GSO super-packet split into more segments than one batch
		// holds, or one that could not be split; the kernel retransmits
		// what was lost.
		e.metrics.DroppedPackets.Add(1)
	case err != nil:
		e.mu.Lock()
		if !e.closed {
			e.readErr = err
		}
		e.mu.Unlock()
		return false
	}
	return true
}

// deliver hands one packet read from the device with the virtio-net header
// h (which says whether its checksums need verifying) to the stack, or back
// to the kernel; it takes ownership of v.
func (e *linkEndpoint) deliver(d stack.NetworkDispatcher, v *buffer.View, h tundev.VirtioNetHdr) {
	pkt := v.AsSlice()
	e.metrics.TUNRxPackets.Add(1)
	e.metrics.TUNRxBytes.Add(uint64(len(pkt)))
	trusted := h.ChecksumTrusted()
	if trusted {
		e.metrics.TUNRxChecksumTrusted.Add(1)
	}
	proto := header.IPv4ProtocolNumber
	if header.IPVersion(pkt) == header.IPv6Version {
		proto = header.IPv6ProtocolNumber
		// IPv6 goes to the stack's IPv6 NIC (see link6); without one
		// (IPv6 off) there is nothing to deliver it to.
		if d = e.dispatcher6(); d == nil {
			e.metrics.DroppedPackets.Add(1)
			v.Release()
			return
		}
	}
	switch classify(pkt) {
	case toStack:
		if rules := e.impair.Active(); rules != nil && e.impairInbound(d, v, h, rules) {
			return
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: splitHeaders(v)})
		e.rxTrusted.Store(trusted)
		d.DeliverNetworkPacket(proto, pb)
		pb.DecRef()
	case passThrough:
		// Back with what the kernel said about its checksum: a partial
		// one stays partial, and the kernel trusts it again on delivery.
		e.metrics.PassthroughPackets.Add(1)
		e.write(tundev.VirtioNetHdr{Flags: h.Flags, CsumStart: h.CsumStart, CsumOffset: h.CsumOffset}, [][]byte{pkt})
		v.Release()
	case swapBack:
		// As passThrough: swapping source and destination leaves a
		// partial checksum right (the pseudo-header sum is the same).
		e.metrics.PassthroughPackets.Add(1)
		swapAddresses6(pkt)
		e.write(tundev.VirtioNetHdr{Flags: h.Flags, CsumStart: h.CsumStart, CsumOffset: h.CsumOffset}, [][]byte{pkt})
		v.Release()
	default:
		e.metrics.DroppedPackets.Add(1)
		v.Release()
	}
}

// splitHeaders returns the packet in v as a buffer whose first view holds a
// copy of the IP and transport headers and whose second is v itself,
// trimmed to the rest. gVisor parses headers with Buffer.PullUp, which
// copies the whole chunk when the view is shared (copy on write), and TCP
// shares every inbound packet's views when it clones the packet into a
// segment: with headers and data in one 64 KiB chunk, that would copy all of
// it for every segment. Copying only the headers keeps the data zero-copy.
func splitHeaders(v *buffer.View) buffer.Buffer {
	pkt := v.AsSlice()
	n := min(headersLen(pkt), len(pkt))
	if n == len(pkt) {
		return buffer.MakeWithView(v)
	}
	b := buffer.MakeWithView(buffer.NewViewWithData(pkt[:n]))
	v.TrimFront(n)
	b.Append(v)
	return b
}

// headersLen is the length of the IPv4 and transport headers at the start
// of pkt, as far as it can tell; gVisor checks them properly.
func headersLen(pkt []byte) int {
	if header.IPVersion(pkt) == header.IPv6Version {
		return headersLen6(pkt)
	}
	ip := header.IPv4(pkt)
	n := int(ip.HeaderLength())
	if ip.FragmentOffset() != 0 {
		return n
	}
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		if len(pkt) >= n+header.TCPMinimumSize {
			n += int(header.TCP(pkt[n:]).DataOffset())
		}
	case header.UDPProtocolNumber:
		n += header.UDPMinimumSize
	case header.ICMPv4ProtocolNumber:
		n += header.ICMPv4MinimumSize
	}
	return n
}

type verdict int

const (
	drop verdict = iota
	toStack
	passThrough
	// swapBack: an IPv6 packet written back with its addresses swapped
	// (swapAddresses6).
	swapBack
)

// classify decides where a packet read from the device goes. The stack
// terminates TCP and UDP and answers ICMP echo requests; every other IPv4
// packet (other protocols, ICMP errors and replies) the kernel sent to
// 127/8 is handed back to the kernel unchanged, which then delivers it as
// lo would have. Because relayed flows use the client's own addresses and
// ports, an ICMP error the kernel sends about them (port unreachable) is
// already addressed and quoted the way the client's socket expects.
// IPv6 is classified by classify6.
//
// TCP between a socket and itself (connected to its own address and port) is
// handed back too. On lo that socket is its own peer: its SYN reaches itself
// (a simultaneous open) and its ACKs acknowledge its own data. The relay's
// mirrored tuple would be the connection itself, so the stack could only
// stand in as a peer that does not exist on lo, with its own handshake,
// window and MSS; and gVisor, unlike Linux, ignores the ACK of a data
// segment that arrives at a zero receive window (tcp.receiver.acceptable),
// so a socket that writes to itself while it reads stalled when looped
// through one gVisor endpoint. Written back unchanged, every segment still
// crosses the device and uloopd, and the kernel does exactly what it does on
// lo.
func classify(pkt []byte) verdict {
	if len(pkt) > 0 && header.IPVersion(pkt) == header.IPv6Version {
		return classify6(pkt)
	}
	if len(pkt) < header.IPv4MinimumSize || header.IPVersion(pkt) != header.IPv4Version {
		return drop
	}
	ip := header.IPv4(pkt)
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		if tcpToItself(ip) {
			return passThrough
		}
		return toStack
	case header.UDPProtocolNumber:
		return toStack
	case header.ICMPv4ProtocolNumber:
		hl := int(ip.HeaderLength())
		// A non-first fragment carries no ICMP header; an echo request is
		// reassembled by the stack, so fragments go there.
		if ip.FragmentOffset() != 0 {
			return toStack
		}
		if hl < header.IPv4MinimumSize || len(pkt) < hl+1 {
			return drop
		}
		if header.ICMPv4Type(pkt[hl]) == header.ICMPv4Echo {
			return toStack
		}
		return passThrough
	default:
		return passThrough
	}
}

// tcpToItself reports whether ip is a TCP segment whose source and
// destination are the same address and port.
func tcpToItself(ip header.IPv4) bool {
	hl := int(ip.HeaderLength())
	if ip.FragmentOffset() != 0 || hl < header.IPv4MinimumSize || len(ip) < hl+4 {
		return false // the stack drops or reassembles it
	}
	tcp := header.TCP(ip[hl:])
	return ip.SourceAddress() == ip.DestinationAddress() && tcp.SourcePort() == tcp.DestinationPort()
}

// write writes one packet to the device and counts it.
func (e *linkEndpoint) write(vnet tundev.VirtioNetHdr, pkt [][]byte) error {
	if err := e.dev.WritePacket(vnet, pkt); err != nil {
		e.metrics.TUNWriteErrors.Add(1)
		return err
	}
	n := 0
	for _, s := range pkt {
		n += len(s)
	}
	e.metrics.TUNTxPackets.Add(1)
	e.metrics.TUNTxBytes.Add(uint64(n))
	return nil
}

// WritePackets implements stack.LinkEndpoint.WritePackets: each packet goes
// to the device as the list of views it already is (writev), with a
// virtio-net header built from its GSO options.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return e.writePackets(pkts, vnetHdr)
}

// writePackets writes pkts, each with the virtio-net header hdr gives it.
func (e *linkEndpoint) writePackets(pkts stack.PacketBufferList, hdr func(*stack.PacketBuffer) tundev.VirtioNetHdr) (int, tcpip.Error) {
	n := 0
	rules := e.impair.Active()
	for _, pkt := range pkts.AsSlice() {
		if rules != nil && e.impairOutbound(pkt, rules) {
			n++
			continue
		}
		vnet, views := hdr(pkt), pkt.AsSlices()
		if e.udp != nil && e.udp.send(vnet, views) {
			n++
			continue
		}
		if err := e.acks.send(vnet, views); err != nil {
			if errors.Is(err, os.ErrClosed) {
				if n == 0 {
					return 0, &tcpip.ErrClosedForSend{}
				}
				break
			}
			// Any other failure (ENOBUFS, say) loses the packet as a full
			// queue would; TCP retransmits.
		}
		n++
	}
	return n, nil
}

// vnetHdr says what the kernel has to do to pkt, as gVisor's fdbased
// endpoint does for a tap device, except that a TUN device carries no link
// header, so the checksum starts right after the IP header.
func vnetHdr(pkt *stack.PacketBuffer) tundev.VirtioNetHdr {
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return partialChecksum(pkt)
	}
	h := tundev.VirtioNetHdr{HdrLen: uint16(pkt.HeaderSize())}
	if gso.NeedsCsum {
		h.Flags = tundev.VirtioNetHdrFNeedsCsum
		h.CsumStart = gso.L3HdrLen
		h.CsumOffset = gso.CsumOffset
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case stack.GSOTCPv4:
			h.GSOType = tundev.VirtioNetHdrGSOTCPv4
		case stack.GSOTCPv6:
			h.GSOType = tundev.VirtioNetHdrGSOTCPv6
		}
		h.GSOSize = gso.MSS
	}
	return h
}

// partialChecksum completes what TX checksum offload left undone on a
// packet that is not a GSO super-packet: for TCP and UDP it writes the
// pseudo-header sum into the checksum field and asks the kernel to treat
// the rest as partial. A fragment is left alone: a checksum spans the
// whole datagram, so no fragment can carry a partial one; gVisor left its
// UDP checksum 0, which IPv4 defines as "none" (RFC 768).
func partialChecksum(pkt *stack.PacketBuffer) tundev.VirtioNetHdr {
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	if len(ip) < header.IPv4MinimumSize || ip.More() || ip.FragmentOffset() != 0 {
		return tundev.VirtioNetHdr{}
	}
	var field int
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber:
		field = header.TCPChecksumOffset
	case header.UDPProtocolNumber:
		field = udpChecksumOffset
	default:
		return tundev.VirtioNetHdr{}
	}
	th := pkt.TransportHeader().Slice()
	if len(th) < field+2 {
		return tundev.VirtioNetHdr{}
	}
	length := uint16(pkt.Size() - len(ip))
	sum := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), length)
	binary.BigEndian.PutUint16(th[field:], sum)
	return tundev.VirtioNetHdr{
		Flags:      tundev.VirtioNetHdrFNeedsCsum,
		CsumStart:  uint16(len(ip)),
		CsumOffset: uint16(field),
	}
}

// udpChecksumOffset is where the checksum sits in a UDP header (RFC 768).
const udpChecksumOffset = 6
