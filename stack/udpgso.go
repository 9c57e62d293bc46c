package stack

import (
	"bytes"
	"encoding/binary"
	"sync"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// udpGSO writes the datagrams a UDP relay pump sends in one drain as few
// packets as it can: consecutive datagrams of one flow, all of one payload
// size but the last, become one UDP GSO packet (virtio GSO_UDP_L4) behind
// the first one's IPv4 and UDP headers, and the kernel splits it back into
// the datagrams at the receiving socket. Under a UDP flood the TUN reader
// hands a pump several datagrams at once (see readLoop), and one write of
// many datagrams costs much less than a write each: a third of uloopd's
// CPU in a flood was those writes.
//
// Only IPv4 datagrams without IP options or fragments, with the partial
// checksum the link endpoint gives them, are held, and only while a pump
// drains (begin ... end): nothing else waits. The packet it builds is the
// one wireguard-go builds for its UDP GRO (applyUDPCoalesceAccounting): the
// IP total length and the UDP length of the whole, and in the UDP checksum
// field the pseudo-header sum over that whole length, which the kernel's
// segmentation adjusts per datagram (__udp_gso_segment).
type udpGSO struct {
	write   func(tundev.VirtioNetHdr, [][]byte) error
	metrics *Metrics

	mu sync.Mutex
	// draining is how many pumps are between begin and end.
	// +checklocks:mu
	draining int
	// hdr is the IPv4 and UDP headers of the first datagram held, vnet its
	// virtio-net header; seg its payload size.
	// +checklocks:mu
	hdr [udpGSOHeaders]byte
	// +checklocks:mu
	vnet tundev.VirtioNetHdr
	// +checklocks:mu
	seg int
	// n is how many datagrams are held, their payloads back to back in
	// buf.
	// +checklocks:mu
	n int
	// +checklocks:mu
	buf []byte
}

const (
	udpGSOHeaders = header.IPv4MinimumSize + header.UDPMinimumSize
	// udpGSOMaxPayload is the most payload one packet can carry: its IPv4
	// total length is 16 bits.
	udpGSOMaxPayload = maxIPv4PacketSize - udpGSOHeaders
	// udpGSOMaxSegments stays under the kernel's UDP_MAX_SEGMENTS (128).
	udpGSOMaxSegments = 64
)

func newUDPGSO(write func(tundev.VirtioNetHdr, [][]byte) error, m *Metrics) *udpGSO {
	return &udpGSO{write: write, metrics: m, buf: make([]byte, 0, udpGSOMaxPayload)}
}

// begin and end bracket a pump's drain: datagrams it writes in between may
// be held, and end writes what is held once no pump drains.
func (g *udpGSO) begin() {
	g.mu.Lock()
	g.draining++
	g.mu.Unlock()
}

func (g *udpGSO) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.draining--
	if g.draining == 0 {
		g.flushLocked()
	}
}

// send holds the packet pkt with virtio-net header vnet if it can join a
// UDP GSO packet, writing what was held before it when they cannot go
// together. false: not held, the caller writes it (after whatever was
// held, which send has written).
func (g *udpGSO) send(vnet tundev.VirtioNetHdr, pkt [][]byte) bool {
	if !isUDPv4(pkt) {
		// Nothing held has to go before it: only datagrams of a flow
		// (and its fragments) are ordered.
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n == 0 && g.draining == 0 {
		return false
	}
	h, payload, ok := udpGSOParts(vnet, pkt)
	if !ok || g.draining == 0 {
		g.flushLocked()
		return false
	}
	if g.n > 0 && !g.joins(h, payload) {
		g.flushLocked()
	}
	if g.n == 0 {
		copy(g.hdr[:], h)
		g.vnet, g.seg = vnet, payload
	}
	g.buf = append(g.buf, pkt[0][udpGSOHeaders:]...)
	for _, v := range pkt[1:] {
		g.buf = append(g.buf, v...)
	}
	g.n++
	if g.n == udpGSOMaxSegments || len(g.buf)+g.seg > udpGSOMaxPayload || payload < g.seg {
		g.flushLocked()
	}
	return true
}

// joins reports whether a datagram with headers h and payload bytes can
// follow the held ones in the same GSO packet: same flow and IP header
// fields (but for the length, ID and checksum, which the kernel rewrites
// per datagram), the same payload size or smaller (the last), and room.
func (g *udpGSO) joins(h []byte, payload int) bool {
	if payload > g.seg || len(g.buf)+payload > udpGSOMaxPayload {
		return false
	}
	held := g.hdr[:]
	return held[0] == h[0] && held[1] == h[1] && // version, IHL, TOS
		bytes.Equal(held[6:10], h[6:10]) && // flags, TTL, protocol
		bytes.Equal(held[12:24], h[12:24]) // addresses and ports
}

// flushLocked writes what is held: one datagram as it came, several as one
// GSO packet.
// +checklocks:g.mu
func (g *udpGSO) flushLocked() {
	switch g.n {
	case 0:
		return
	case 1:
		g.write(g.vnet, [][]byte{g.hdr[:], g.buf})
	default:
		hdr := g.hdr
		ip := header.IPv4(hdr[:])
		ip.SetTotalLength(uint16(udpGSOHeaders + len(g.buf)))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		udpLen := uint16(header.UDPMinimumSize + len(g.buf))
		udp := header.UDP(hdr[header.IPv4MinimumSize:])
		udp.SetLength(udpLen)
		binary.BigEndian.PutUint16(hdr[header.IPv4MinimumSize+udpChecksumOffset:], header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), udpLen))
		vnet := tundev.VirtioNetHdr{
			Flags:      tundev.VirtioNetHdrFNeedsCsum,
			GSOType:    tundev.VirtioNetHdrGSOUDPL4,
			HdrLen:     udpGSOHeaders,
			GSOSize:    uint16(g.seg),
			CsumStart:  header.IPv4MinimumSize,
			CsumOffset: udpChecksumOffset,
		}
		if g.write(vnet, [][]byte{hdr[:], g.buf}) == nil {
			g.metrics.UDPGSODatagrams.Add(uint64(g.n))
		}
	}
	g.n, g.buf = 0, g.buf[:0]
}

// udpGSOParts returns the IPv4 and UDP headers of pkt and its payload size,
// if pkt is a datagram a UDP GSO packet can carry: IPv4 without options or
// fragments, UDP with a payload, headers in the first view, and the partial
// checksum the link endpoint gives UDP (partialChecksum).
func udpGSOParts(vnet tundev.VirtioNetHdr, pkt [][]byte) ([]byte, int, bool) {
	if vnet.GSOType != tundev.VirtioNetHdrGSONone || vnet.Flags != tundev.VirtioNetHdrFNeedsCsum ||
		vnet.CsumStart != header.IPv4MinimumSize || vnet.CsumOffset != udpChecksumOffset {
		return nil, 0, false
	}
	if len(pkt) == 0 || len(pkt[0]) < udpGSOHeaders {
		return nil, 0, false
	}
	h := pkt[0][:udpGSOHeaders]
	ip := header.IPv4(h)
	if header.IPVersion(h) != header.IPv4Version || ip.HeaderLength() != header.IPv4MinimumSize || ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
		return nil, 0, false
	}
	size := 0
	for _, v := range pkt {
		size += len(v)
	}
	payload := size - udpGSOHeaders
	if payload <= 0 || int(ip.TotalLength()) != size {
		return nil, 0, false
	}
	return h, payload, true
}

// isUDPv4 reports whether pkt, as the stack hands it over (headers in the
// first view), is an IPv4 packet carrying UDP, a fragment included.
func isUDPv4(pkt [][]byte) bool {
	return len(pkt) > 0 && len(pkt[0]) >= header.IPv4MinimumSize && header.IPVersion(pkt[0]) == header.IPv4Version &&
		header.IPv4(pkt[0]).TransportProtocol() == header.UDPProtocolNumber
}
