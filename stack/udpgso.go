package stack

import (
	"bytes"
	"encoding/binary"
	"sync"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
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
// Only datagrams without IPv4 options, IPv6 extension headers or fragments
// are held (IPv4 ones with the partial checksum the link endpoint gives
// them, IPv6 ones with the full checksum gVisor computed), and only while a
// pump drains (begin ... end): nothing else waits. The packet it builds is
// the one wireguard-go builds for its UDP GRO (applyUDPCoalesceAccounting):
// the IPv4 total length or IPv6 payload length and the UDP length of the
// whole, and in the UDP checksum field the pseudo-header sum over that whole
// length, which the kernel's segmentation adjusts per datagram
// (__udp_gso_segment) before it completes the checksum.
type udpGSO struct {
	write   func(tundev.VirtioNetHdr, [][]byte) error
	metrics *Metrics

	mu sync.Mutex
	// draining is how many pumps are between begin and end.
	// +checklocks:mu
	draining int
	// hdr[:hlen] is the IP and UDP headers of the first datagram held,
	// vnet its virtio-net header; seg its payload size.
	// +checklocks:mu
	hdr [header.IPv6MinimumSize + header.UDPMinimumSize]byte
	// +checklocks:mu
	hlen int
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
	// udpGSOMaxPayload is the most payload one packet carries: an IPv4
	// total length is 16 bits (an IPv6 payload length leaves 20 bytes
	// more, unused).
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
	if !isUDPPacket(pkt) {
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
		g.hlen = copy(g.hdr[:], h)
		g.vnet, g.seg = vnet, payload
	}
	g.buf = append(g.buf, pkt[0][len(h):]...)
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
	if payload > g.seg || len(g.buf)+payload > udpGSOMaxPayload || len(h) != g.hlen {
		return false
	}
	held := g.hdr[:g.hlen]
	if g.hlen == udpGSOHeaders {
		return held[0] == h[0] && held[1] == h[1] && // version, IHL, TOS
			bytes.Equal(held[6:10], h[6:10]) && // flags, TTL, protocol
			bytes.Equal(held[12:24], h[12:24]) // addresses and ports
	}
	return bytes.Equal(held[:4], h[:4]) && // version, traffic class, flow label
		bytes.Equal(held[6:44], h[6:44]) // next header, hop limit, addresses, ports
}

// flushLocked writes what is held: one datagram as it came, several as one
// GSO packet.
// +checklocks:g.mu
func (g *udpGSO) flushLocked() {
	switch g.n {
	case 0:
		return
	case 1:
		g.write(g.vnet, [][]byte{g.hdr[:g.hlen], g.buf})
	default:
		hdr := g.hdr
		iplen := g.hlen - header.UDPMinimumSize
		udpLen := uint16(header.UDPMinimumSize + len(g.buf))
		var src, dst tcpip.Address
		if iplen == header.IPv4MinimumSize {
			ip := header.IPv4(hdr[:iplen])
			ip.SetTotalLength(uint16(iplen) + udpLen)
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
			src, dst = ip.SourceAddress(), ip.DestinationAddress()
		} else {
			ip := header.IPv6(hdr[:iplen])
			ip.SetPayloadLength(udpLen)
			src, dst = ip.SourceAddress(), ip.DestinationAddress()
		}
		header.UDP(hdr[iplen:]).SetLength(udpLen)
		binary.BigEndian.PutUint16(hdr[iplen+udpChecksumOffset:], header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udpLen))
		vnet := tundev.VirtioNetHdr{
			Flags:      tundev.VirtioNetHdrFNeedsCsum,
			GSOType:    tundev.VirtioNetHdrGSOUDPL4,
			HdrLen:     uint16(g.hlen),
			GSOSize:    uint16(g.seg),
			CsumStart:  uint16(iplen),
			CsumOffset: udpChecksumOffset,
		}
		if g.write(vnet, [][]byte{hdr[:g.hlen], g.buf}) == nil {
			g.metrics.UDPGSODatagrams.Add(uint64(g.n))
		}
	}
	g.n, g.buf = 0, g.buf[:0]
}

// udpGSOParts returns the IP and UDP headers of pkt and its payload size,
// if pkt is a datagram a UDP GSO packet can carry: IPv4 without options or
// fragments, with the partial checksum the link endpoint gives UDP
// (partialChecksum), or IPv6 without extension headers, with the full
// checksum gVisor computed (link6 offloads none); UDP with a payload; the
// headers in the first view.
func udpGSOParts(vnet tundev.VirtioNetHdr, pkt [][]byte) ([]byte, int, bool) {
	if len(pkt) == 0 || vnet.GSOType != tundev.VirtioNetHdrGSONone {
		return nil, 0, false
	}
	first := pkt[0]
	var hlen, total int
	switch {
	case len(first) >= udpGSOHeaders && header.IPVersion(first) == header.IPv4Version:
		ip := header.IPv4(first)
		if vnet.Flags != tundev.VirtioNetHdrFNeedsCsum || vnet.CsumStart != header.IPv4MinimumSize || vnet.CsumOffset != udpChecksumOffset ||
			ip.HeaderLength() != header.IPv4MinimumSize || ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
			return nil, 0, false
		}
		hlen, total = udpGSOHeaders, int(ip.TotalLength())
	case len(first) >= header.IPv6MinimumSize+header.UDPMinimumSize && header.IPVersion(first) == header.IPv6Version:
		ip := header.IPv6(first)
		if vnet != (tundev.VirtioNetHdr{}) || ip.TransportProtocol() != header.UDPProtocolNumber {
			return nil, 0, false
		}
		hlen, total = header.IPv6MinimumSize+header.UDPMinimumSize, header.IPv6MinimumSize+int(ip.PayloadLength())
	default:
		return nil, 0, false
	}
	size := 0
	for _, v := range pkt {
		size += len(v)
	}
	payload := size - hlen
	if payload <= 0 || total != size {
		return nil, 0, false
	}
	return first[:hlen], payload, true
}

// isUDPPacket reports whether pkt, as the stack hands it over (headers in
// the first view), is a UDP datagram or a fragment that may be one: what
// has to follow the datagrams of its flow held before it.
func isUDPPacket(pkt [][]byte) bool {
	if len(pkt) == 0 {
		return false
	}
	// isUDP covers IPv4 fragments (the protocol field says UDP in each);
	// an IPv6 fragment's next header is the fragment header.
	return isUDP(pkt[0]) || len(pkt[0]) >= header.IPv6MinimumSize && header.IPVersion(pkt[0]) == header.IPv6Version &&
		header.IPv6(pkt[0]).TransportProtocol() == header.IPv6FragmentHeader
}
