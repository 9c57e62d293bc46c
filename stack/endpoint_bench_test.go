package stack

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// discardDevice is a tundev.Device that reads nothing and drops what is
// written, without touching the bytes, so a benchmark measures only the
// endpoint. Read blocks until Close.
type discardDevice struct {
	packets, bytes atomic.Int64
	closeOnce      sync.Once
	closed         chan struct{}
}

func newDiscardDevice() *discardDevice { return &discardDevice{closed: make(chan struct{})} }

func (d *discardDevice) Read([][]byte, []int, []tundev.VirtioNetHdr, int) (int, error) {
	<-d.closed
	return 0, os.ErrClosed
}
func (d *discardDevice) TryRead([][]byte, []int, []tundev.VirtioNetHdr, int) (int, error) {
	return 0, nil
}
func (d *discardDevice) ReadWaited() bool      { return true }
func (d *discardDevice) UDPSegmentation() bool { return false }
func (d *discardDevice) WritePacket(_ tundev.VirtioNetHdr, pkt [][]byte) error {
	d.packets.Add(1)
	for _, s := range pkt {
		d.bytes.Add(int64(len(s)))
	}
	return nil
}
func (*discardDevice) BatchSize() int { return 1 }
func (*discardDevice) MTU() int       { return 65535 }
func (*discardDevice) Name() string   { return "discard0" }
func (d *discardDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}

// countingDispatcher takes delivered packets and keeps nothing.
type countingDispatcher struct{ packets int }

func (d *countingDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	d.packets++
}
func (*countingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// tcpSegment is a 64 KiB TCP segment as the kernel hands it over.
func tcpSegment() []byte {
	payload := make([]byte, 65535-header.IPv4MinimumSize-header.TCPMinimumSize)
	tcp := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(tcp).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 5201, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 65535})
	copy(tcp[header.TCPMinimumSize:], payload)
	return ipv4Packet([4]byte{127, 0, 0, 1}, [4]byte{127, 0, 0, 1}, header.TCPProtocolNumber, tcp)
}

// BenchmarkDeliver64K: a 64 KiB segment read from the device becomes a
// packet buffer for the stack. B/op stays at a few hundred bytes (the
// header copy and bookkeeping), not 64 KiB: the payload is not copied.
func BenchmarkDeliver64K(b *testing.B) {
	e := newLinkEndpoint(newDiscardDevice(), new(Metrics))
	d := &countingDispatcher{}
	pkt := tcpSegment()
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		// Stands in for the device's read into the view (done by the
		// kernel), which is not the endpoint's cost.
		v := buffer.NewViewWithData(pkt)
		b.StartTimer()
		e.deliver(d, v, tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFNeedsCsum, CsumStart: header.IPv4MinimumSize, CsumOffset: header.TCPChecksumOffset})
	}
}

// BenchmarkWritePackets64K: a 64 KiB segment built by gVisor (header view
// plus payload view) goes to the device as it is. B/op stays far below
// 64 KiB: the views are handed to writev, not flattened.
func BenchmarkWritePackets64K(b *testing.B) {
	dev := newDiscardDevice()
	e := newLinkEndpoint(dev, new(Metrics))
	payload := buffer.NewViewSize(65535 - header.IPv4MinimumSize - header.TCPMinimumSize)
	b.SetBytes(65535)
	b.ReportAllocs()
	for b.Loop() {
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{
			ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize,
			Payload:            buffer.MakeWithView(payload.Clone()),
		})
		pb.TransportHeader().Push(header.TCPMinimumSize)
		pb.NetworkHeader().Push(header.IPv4MinimumSize)
		var l stack.PacketBufferList
		l.PushBack(pb)
		if _, err := e.WritePackets(l); err != nil {
			b.Fatal(err)
		}
		pb.DecRef()
	}
	if got := dev.bytes.Load() / dev.packets.Load(); got != 65535 {
		b.Fatalf("wrote %d-byte packets, want 65535", got)
	}
	payload.Release()
}
