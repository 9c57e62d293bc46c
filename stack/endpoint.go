package stack

import (
	"errors"
	"os"
	"sync"

	"github.com/uloop/uloop/tundev"
	"golang.zx2c4.com/wireguard/tun"
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

// LinkEndpoint joins a tundev.Device to a gVisor stack. Its reader goroutine
// reads batches of IPv4 packets from the device and delivers them to the
// stack, or writes them straight back when the stack has no business with
// them (see classify); WritePackets writes the stack's packets to the device.
//
// Buffer ownership: the reader reads each packet into a *buffer.View of its
// own and gives that view to the PacketBuffer it delivers (no copy); it
// DecRefs the PacketBuffer after delivery, and gVisor keeps its own
// references for as long as it holds the data. WritePackets only borrows
// the packets it is given: it copies them out and their owner (the stack)
// DecRefs them after the call.
type LinkEndpoint struct {
	dev     tundev.Device
	mtu     uint32
	metrics *Metrics

	// writeBufs pools batches of contiguous write buffers: wireguard-go's
	// Write takes one []byte per packet, so an outgoing packet, whose headers
	// and payload live in separate views, is copied once into one of these.
	writeBufs sync.Pool

	// done is closed when the reader goroutine exits.
	done chan struct{}

	// mu guards the fields below.
	mu sync.Mutex
	// dispatcher is the stack side; nil until Attach.
	dispatcher stack.NetworkDispatcher
	started    bool
	closed     bool
	// readErr is why the reader stopped, if not because of Close.
	readErr error
}

var _ stack.LinkEndpoint = (*LinkEndpoint)(nil)

// NewLinkEndpoint returns an endpoint for dev. The reader starts on Attach.
func NewLinkEndpoint(dev tundev.Device, m *Metrics) *LinkEndpoint {
	e := &LinkEndpoint{dev: dev, mtu: uint32(dev.MTU()), metrics: m, done: make(chan struct{})}
	batch := dev.BatchSize()
	size := tundev.WriteOffset + dev.MTU()
	e.writeBufs.New = func() any {
		bufs := make([][]byte, batch)
		for i := range bufs {
			bufs[i] = make([]byte, size)
		}
		return &bufs
	}
	return e
}

// Done is closed when the reader goroutine has stopped, after Close or
// because the device failed (for example, it was deleted); Err says why.
func (e *LinkEndpoint) Done() <-chan struct{} { return e.done }

// Err is the error that stopped the reader, or nil if it was stopped by
// Close or is still running.
func (e *LinkEndpoint) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.readErr
}

// MTU implements stack.LinkEndpoint.MTU.
func (e *LinkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.LinkEndpoint.SetMTU. The device's MTU is fixed.
func (e *LinkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength. A TUN
// device carries bare IP packets.
func (*LinkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.LinkAddress.
func (*LinkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress.
func (*LinkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.Capabilities. No checksum
// offload: wireguard-go writes a zero virtio header for packets it does not
// coalesce, so the kernel expects complete checksums, and on the way in
// gVisor's own check is what turns a corrupt packet into a counted drop.
func (*LinkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityNone
}

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (*LinkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.AddHeader.
func (*LinkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.ParseHeader.
func (*LinkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction.
func (*LinkEndpoint) SetOnCloseAction(func()) {}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (e *LinkEndpoint) IsAttached() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dispatcher != nil
}

// Attach implements stack.LinkEndpoint.Attach. The first attach starts the
// reader goroutine; detaching (nil) leaves it to Close to stop.
func (e *LinkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if d != nil && !e.started && !e.closed {
		e.started = true
		go e.readLoop(d)
	}
}

// Wait implements stack.LinkEndpoint.Wait.
func (e *LinkEndpoint) Wait() {
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	if started {
		<-e.done
	}
}

// Close implements stack.LinkEndpoint.Close: it closes the device, which
// makes the reader's blocked Read return.
func (e *LinkEndpoint) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	e.mu.Unlock()
	e.dev.Close()
}

// readLoop reads batches from the device until it fails or is closed.
func (e *LinkEndpoint) readLoop(d stack.NetworkDispatcher) {
	defer close(e.done)
	batch := e.dev.BatchSize()
	views := make([]*buffer.View, batch)
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	fill := func(i int) {
		views[i] = buffer.NewViewSize(int(e.mtu))
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
	for {
		n, err := e.dev.Read(bufs, sizes, 0)
		for i := 0; i < n; i++ {
			if sizes[i] < copyBelow {
				// Hand over a tight copy and keep the big buffer.
				e.deliver(d, buffer.NewViewWithData(bufs[i][:sizes[i]]))
				continue
			}
			views[i].CapLength(sizes[i])
			e.deliver(d, views[i])
			fill(i)
		}
		if errors.Is(err, tun.ErrTooManySegments) {
			// A GSO super-packet split into more segments than one batch
			// holds; the kernel retransmits what was lost.
			e.metrics.DroppedPackets.Add(1)
			continue
		}
		if err != nil {
			e.mu.Lock()
			if !e.closed {
				e.readErr = err
			}
			e.mu.Unlock()
			return
		}
	}
}

// deliver hands one packet read from the device to the stack, or back to
// the kernel; it takes ownership of v.
func (e *LinkEndpoint) deliver(d stack.NetworkDispatcher, v *buffer.View) {
	pkt := v.AsSlice()
	e.metrics.TUNRxPackets.Add(1)
	e.metrics.TUNRxBytes.Add(uint64(len(pkt)))
	switch classify(pkt) {
	case toStack:
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
		d.DeliverNetworkPacket(header.IPv4ProtocolNumber, pb)
		pb.DecRef()
	case passThrough:
		e.metrics.PassthroughPackets.Add(1)
		e.writeRaw(pkt)
		v.Release()
	default:
		e.metrics.DroppedPackets.Add(1)
		v.Release()
	}
}

type verdict int

const (
	drop verdict = iota
	toStack
	passThrough
)

// classify decides where a packet read from the device goes. The stack
// terminates TCP and UDP and answers ICMP echo requests; every other IPv4
// packet (other protocols, ICMP errors and replies) the kernel sent to
// 127/8 is handed back to the kernel unchanged, which then delivers it as
// lo would have. Because relayed flows use the client's own addresses and
// ports, an ICMP error the kernel sends about them (port unreachable) is
// already addressed and quoted the way the client's socket expects.
// Anything that is not IPv4 is dropped: the device carries no IPv6 (Linux
// refuses ::1 on any device but lo).
func classify(pkt []byte) verdict {
	if len(pkt) < header.IPv4MinimumSize || header.IPVersion(pkt) != header.IPv4Version {
		return drop
	}
	ip := header.IPv4(pkt)
	switch ip.TransportProtocol() {
	case header.TCPProtocolNumber, header.UDPProtocolNumber:
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

// writeRaw writes one packet back to the device unchanged.
func (e *LinkEndpoint) writeRaw(pkt []byte) {
	bp := e.writeBufs.Get().(*[][]byte)
	defer e.writeBufs.Put(bp)
	buf := (*bp)[0]
	n := copy(buf[tundev.WriteOffset:], pkt)
	if _, err := e.dev.Write([][]byte{buf[:tundev.WriteOffset+n]}, tundev.WriteOffset); err != nil {
		e.metrics.TUNWriteErrors.Add(1)
		return
	}
	e.metrics.TUNTxPackets.Add(1)
	e.metrics.TUNTxBytes.Add(uint64(n))
}

// WritePackets implements stack.LinkEndpoint.WritePackets. Each packet is
// copied once into a contiguous buffer (wireguard-go writes one []byte per
// packet) and the batch goes to the device in one call, which lets it
// coalesce consecutive TCP segments.
func (e *LinkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	bp := e.writeBufs.Get().(*[][]byte)
	defer e.writeBufs.Put(bp)
	all := pkts.AsSlice()
	written := 0
	for len(all) > 0 {
		n := min(len(all), len(*bp))
		bufs := make([][]byte, 0, n)
		var bytes uint64
		for i, pkt := range all[:n] {
			buf := (*bp)[i][:cap((*bp)[i])]
			off := tundev.WriteOffset
			for _, s := range pkt.AsSlices() {
				off += copy(buf[off:], s)
			}
			bytes += uint64(off - tundev.WriteOffset)
			bufs = append(bufs, buf[:off])
		}
		if _, err := e.dev.Write(bufs, tundev.WriteOffset); err != nil {
			e.metrics.TUNWriteErrors.Add(1)
			if errors.Is(err, os.ErrClosed) {
				return written, &tcpip.ErrClosedForSend{}
			}
			// A failed write loses packets as a full queue would; TCP
			// retransmits. Report the batch as written so the stack does
			// not also count it.
		}
		e.metrics.TUNTxPackets.Add(uint64(n))
		e.metrics.TUNTxBytes.Add(bytes)
		written += n
		all = all[n:]
	}
	return written, nil
}
