// Package tundev is the kernel TUN device that uloop's data path reads
// packets from and writes them back to.
//
// The device is created by wireguard-go's tun package, opened with
// IFF_VNET_HDR and TCP offloads (TSO, checksum offload), but packets do not
// go through wireguard-go in either direction. Read reads each packet with
// readv(2) straight into the caller's buffer behind its virtio-net header,
// splits a GSO super-packet itself (one Read then returns a batch of
// segments) and reports per packet what the kernel vouched for, so that
// nobody checksums a packet the kernel built itself. WritePacket hands each
// packet to writev(2) as the list of buffers it already is, with a
// virtio-net header that lets the kernel do the segmenting and
// checksumming.
package tundev

import (
	"encoding/binary"
	"errors"
)

const (
	// DefaultName is the name uloopd gives its device.
	DefaultName = "ulo0"
	// DefaultMTU is about the largest IPv4 packet: with it the kernel hands
	// over 64 KiB segments directly, which cuts per-packet costs about 40x
	// compared with 1500. It is 121 bytes under 65535 so that the stack can
	// relay a kernel segment whole: gVisor's TCP with host GSO sends at most
	// 65535 - 161 = 65374 data bytes per segment (it leaves room for 160
	// bytes of headers), and at MTU 65535 the kernel sends 65483, which the
	// stack then relayed as 65374 + 109, two TUN writes and two segments for
	// the peer to take and acknowledge. At this MTU the kernel's largest
	// TCP payload is 65414 - 40 = 65374, or 65362 with timestamps.
	// stack.TestDefaultMTUSegmentsWhole checks the arithmetic against
	// gVisor's constant.
	DefaultMTU = 65414
	// TxQueueLen is the device's transmit queue: the packets the kernel
	// holds for uloopd to read. A TUN device gets 500, and a burst of
	// datagrams from a thousand sockets at once (which kernel lo, with no
	// queue at all, takes) overflows it; the integration test of 1000
	// concurrent UDP flows lost about half to tx_dropped with 500.
	TxQueueLen = 4096
	// VirtioNetHdrLen is the size of the header that precedes every packet
	// on a TUN device opened with IFF_VNET_HDR.
	VirtioNetHdrLen = 10
)

// A Read of the kernel device reads one packet of at most maxSuperPacket
// bytes (the largest IPv4 packet, a GSO super-packet included) and, if it
// is a super-packet, splits it into segments of gso_size data bytes each
// behind a copy of its headers, at most maxSegmentHeaders bytes of them
// (IPv4 60 or IPv6 40, plus TCP 60 or UDP 8).
const (
	maxSuperPacket    = 65535
	maxSegmentHeaders = 256
)

// SlotSize is how many bytes (after the offset) buffer i of a Read's batch
// must hold on a device with the given MTU. Buffer 0 gets whole packets, up
// to the MTU. Buffer i > 0 only gets segment i of a super-packet of L bytes
// with H bytes of headers split at gso_size G: i full segments come before
// it, so it carries min(G, L-H-i*G) data bytes, at most (L-H)/(i+1) whatever
// G is. Sizing the buffers so keeps a batch of 128 at MTU 65535 at about
// 380 KiB instead of 8 MiB, which took a reader about 40 ms to allocate and
// clear before it read its first packet (half of `uloop run`'s start).
func SlotSize(i, mtu int) int {
	if i == 0 {
		return mtu
	}
	return min(mtu, maxSegmentHeaders+(maxSuperPacket+i)/(i+1))
}

// Device is a batched packet device. It is the subset of wireguard-go's
// tun.Device that the data path uses, so an in-memory device can stand in
// for the kernel one in tests that run without root.
type Device interface {
	// Read reads one or more packets into bufs, each starting at offset,
	// sets their lengths in sizes and, in hdrs, what the kernel says about
	// their checksums (see VirtioNetHdr.ChecksumTrusted; never a GSO type:
	// super-packets come back split). len(bufs), len(sizes) and len(hdrs)
	// must be at least BatchSize(), and buffer i must hold
	// offset+SlotSize(i, MTU()) bytes (the first a whole packet, the others
	// what a split can put there, less and less). It returns the number of
	// packets read. After Close it returns an error wrapping os.ErrClosed.
	// ErrTooManySegments and ErrDropped are not fatal: the n packets read
	// are valid and the next Read works.
	Read(bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int) (n int, err error)
	// TryRead is Read without the wait: it returns (0, nil) at once when
	// nothing is queued.
	TryRead(bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int) (n int, err error)
	// ReadWaited reports whether the last Read found nothing queued and
	// waited for a packet: if it did not, more are likely queued behind
	// the one it read.
	ReadWaited() bool
	// UDPSegmentation reports whether WritePacket takes UDP GSO packets
	// (VirtioNetHdrGSOUDPL4), which the kernel splits into their
	// datagrams.
	UDPSegmentation() bool
	// WritePacket writes one packet, the concatenation of pkt, preceded by
	// vnet, which tells the kernel what it still has to do to the packet
	// (complete its checksum, treat it as a GSO super-packet). The packet
	// is not copied in user space. Safe for concurrent use.
	WritePacket(vnet VirtioNetHdr, pkt [][]byte) error
	// BatchSize is the most packets one Read returns or one Write should
	// get. It does not change over the life of a Device.
	BatchSize() int
	// MTU is the largest packet the device carries.
	MTU() int
	// Name is the kernel interface name.
	Name() string
	// Close closes the device; the kernel deletes a non-persistent device
	// (and every route through it) when its last file descriptor closes.
	Close() error
}

var (
	// ErrExists is returned by Create when an interface of that name exists.
	ErrExists = errors.New("device already exists")
	// ErrTooManySegments is returned by Read when a GSO super-packet splits
	// into more packets than the buffers hold: the packets returned are
	// valid, the rest of that super-packet is lost (TCP retransmits it), and
	// reading goes on.
	ErrTooManySegments = errors.New("GSO packet split into more segments than one batch holds")
	// ErrDropped is returned by Read when the kernel handed over a packet
	// that cannot be passed on (a GSO super-packet of a kind uloop does not
	// split, or with headers that make no sense): it is dropped, the n
	// packets returned with it are valid, and reading goes on.
	ErrDropped = errors.New("packet from the device dropped")
)

// VirtioNetHdr is struct virtio_net_hdr (linux/virtio_net.h): how a packet
// written to the device is to be checksummed and segmented, and for one read
// from it, what the kernel knows about its checksum. The zero value means a
// complete packet whose checksum nobody has verified.
type VirtioNetHdr struct {
	Flags      uint8  // VirtioNetHdrFNeedsCsum, VirtioNetHdrFDataValid or 0
	GSOType    uint8  // VirtioNetHdrGSONone, VirtioNetHdrGSOTCPv4, ...
	HdrLen     uint16 // length of the headers, for GSO
	GSOSize    uint16 // segment payload size (MSS), for GSO
	CsumStart  uint16 // offset where checksumming starts (the L4 header)
	CsumOffset uint16 // offset of the checksum field from CsumStart
}

// Values of VirtioNetHdr fields, from linux/virtio_net.h.
const (
	VirtioNetHdrFNeedsCsum  = 1
	VirtioNetHdrFDataValid  = 2
	VirtioNetHdrGSONone     = 0
	VirtioNetHdrGSOTCPv4    = 1
	VirtioNetHdrGSOUDP      = 3 // UFO, IPv4 fragmentation offload; never enabled here
	VirtioNetHdrGSOTCPv6    = 4
	VirtioNetHdrGSOUDPL4    = 5 // USO, UDP segmentation (UDP_SEGMENT senders)
	VirtioNetHdrGSOECN      = 0x80
	virtioNetHdrGSOTypeMask = 0x7f
)

// ChecksumTrusted reports whether the kernel vouches for the checksums of a
// packet read with h, so that the receiver need not verify them. NEEDS_CSUM
// (CHECKSUM_PARTIAL) means the kernel built the packet itself and left the
// transport checksum to the device: the field holds only the pseudo-header
// sum, and the data cannot have been corrupted on its way through memory.
// DATA_VALID (CHECKSUM_UNNECESSARY) means the kernel verified it. A packet
// with neither came in as bytes somebody else wrote (a raw socket, a packet
// socket) and its checksums must be checked like a wire's.
func (h VirtioNetHdr) ChecksumTrusted() bool {
	return h.Flags&(VirtioNetHdrFNeedsCsum|VirtioNetHdrFDataValid) != 0
}

// Unmarshal reads h from b, which must hold VirtioNetHdrLen bytes
// (little-endian, as Marshal writes them).
func (h *VirtioNetHdr) Unmarshal(b []byte) {
	_ = b[VirtioNetHdrLen-1]
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = binary.LittleEndian.Uint16(b[2:])
	h.GSOSize = binary.LittleEndian.Uint16(b[4:])
	h.CsumStart = binary.LittleEndian.Uint16(b[6:])
	h.CsumOffset = binary.LittleEndian.Uint16(b[8:])
}

// Marshal writes h into b, which must hold VirtioNetHdrLen bytes. The
// fields are little-endian (virtio 1.0; the kernel's TUN assumes so unless
// TUNSETVNETBE says otherwise, which is only ever needed for legacy
// big-endian guests).
func (h VirtioNetHdr) Marshal(b []byte) {
	_ = b[VirtioNetHdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
}
