// Package tundevtest provides an in-memory tundev.Device for tests that must
// run without root: what the code under test writes goes to a callback, and
// what the test injects comes out of Read.
package tundevtest

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Device is an in-memory tundev.Device.
type Device struct {
	mtu     int
	batch   int
	in      chan packet
	deliver func(pkt []byte)

	mu sync.Mutex
	// next is a packet taken from in that did not fit the batch buffer
	// it came to; the next Read returns it first.
	next *packet

	closeOnce sync.Once
	closed    chan struct{}
	// waited: the last Read found nothing queued and waited.
	waited atomic.Bool
}

var _ tundev.Device = (*Device)(nil)

// packet is an injected packet and what Read reports about it.
type packet struct {
	hdr  tundev.VirtioNetHdr
	data []byte
}

// New returns a device with the given MTU and batch size. deliver receives
// every packet written to the device, in a buffer of its own; it may be called from
// several goroutines at once.
func New(mtu, batch int, deliver func(pkt []byte)) *Device {
	return &Device{mtu: mtu, batch: batch, in: make(chan packet, 1024), deliver: deliver, closed: make(chan struct{})}
}

// Inject queues a copy of pkt to be returned by Read with a zero virtio-net
// header: a packet whose checksums nobody has verified, as one written by a
// raw socket. It drops the packet if the device is closed.
func (d *Device) Inject(pkt []byte) { d.InjectWith(tundev.VirtioNetHdr{}, pkt) }

// InjectWith is Inject with the virtio-net header Read reports for the
// packet, say NEEDS_CSUM with a partial checksum, as the kernel hands over a
// packet it built itself. The header must not be a GSO one.
func (d *Device) InjectWith(hdr tundev.VirtioNetHdr, pkt []byte) {
	p := packet{hdr: hdr, data: append([]byte(nil), pkt...)}
	select {
	case d.in <- p:
	case <-d.closed:
	}
}

// Read implements tundev.Device.Read: it blocks for one packet, then takes
// whatever else is queued, up to len(bufs).
func (d *Device) Read(bufs [][]byte, sizes []int, hdrs []tundev.VirtioNetHdr, offset int) (int, error) {
	return d.read(bufs, sizes, hdrs, offset, true)
}

// TryRead implements tundev.Device.TryRead.
func (d *Device) TryRead(bufs [][]byte, sizes []int, hdrs []tundev.VirtioNetHdr, offset int) (int, error) {
	return d.read(bufs, sizes, hdrs, offset, false)
}

// ReadWaited implements tundev.Device.ReadWaited.
func (d *Device) ReadWaited() bool { return d.waited.Load() }

// UDPSegmentation implements tundev.Device.UDPSegmentation: this device
// delivers what it is given as one packet, so it takes no UDP GSO packets.
func (d *Device) UDPSegmentation() bool { return false }

func (d *Device) read(bufs [][]byte, sizes []int, hdrs []tundev.VirtioNetHdr, offset int, wait bool) (int, error) {
	d.mu.Lock()
	next := d.next
	d.next = nil
	d.mu.Unlock()
	var p packet
	if wait {
		d.waited.Store(false)
	}
	if next == nil {
		select {
		case p = <-d.in:
		case <-d.closed:
			return 0, os.ErrClosed
		default:
			if !wait {
				return 0, nil
			}
			d.waited.Store(true)
			select {
			case p = <-d.in:
			case <-d.closed:
				return 0, os.ErrClosed
			}
		}
	} else {
		p = *next
	}
	if len(p.data) > len(bufs[0])-offset {
		return 0, fmt.Errorf("tundevtest: %d-byte packet does not fit a %d-byte buffer", len(p.data), len(bufs[0])-offset)
	}
	sizes[0] = copy(bufs[0][offset:], p.data)
	hdrs[0] = p.hdr
	for n := 1; n < len(bufs); n++ {
		// The next packet waits for the next Read if it does not fit
		// this buffer: the batch's later buffers are smaller
		// (tundev.SlotSize), and the kernel device only puts segments
		// of one split packet there.
		d.mu.Lock()
		if d.next == nil {
			select {
			case p := <-d.in:
				d.next = &p
			default:
			}
		}
		p, fits := d.next, d.next != nil && len(d.next.data) <= len(bufs[n])-offset
		if fits {
			d.next = nil
		}
		d.mu.Unlock()
		if !fits {
			return n, nil
		}
		sizes[n] = copy(bufs[n][offset:], p.data)
		hdrs[n] = p.hdr
	}
	return len(bufs), nil
}

// WritePacket implements tundev.Device.WritePacket. Like a NIC, it
// completes a partial checksum (VirtioNetHdrFNeedsCsum) before delivering.
func (d *Device) WritePacket(vnet tundev.VirtioNetHdr, pkt [][]byte) error {
	select {
	case <-d.closed:
		return os.ErrClosed
	default:
	}
	var p []byte
	for _, s := range pkt {
		p = append(p, s...)
	}
	if vnet.Flags&tundev.VirtioNetHdrFNeedsCsum != 0 {
		start, field := int(vnet.CsumStart), int(vnet.CsumStart)+int(vnet.CsumOffset)
		if field+2 > len(p) {
			return fmt.Errorf("tundevtest: checksum field at %d beyond %d-byte packet", field, len(p))
		}
		// The field holds the pseudo-header sum; fold in the rest.
		binary.BigEndian.PutUint16(p[field:], ^checksum.Checksum(p[start:], 0))
	}
	d.deliver(p)
	return nil
}

// BatchSize implements tundev.Device.BatchSize.
func (d *Device) BatchSize() int { return d.batch }

// MTU implements tundev.Device.MTU.
func (d *Device) MTU() int { return d.mtu }

// Name implements tundev.Device.Name.
func (d *Device) Name() string { return "memtun0" }

// Close implements tundev.Device.Close.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}
