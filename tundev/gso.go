package tundev

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// splitGSO splits the IPv4 GSO super-packet head+tail, which the kernel
// handed over with h, into segments of h.GSOSize data bytes, as the kernel's
// own GSO would (tcp_gso_segment, __udp_gso_segment): every segment gets a
// copy of the headers with its own IPv4 total length, ID and header
// checksum, TCP sequence number and flags (FIN and PSH only on the last, CWR
// only on the first) or UDP length. The transport checksum is left partial
// (the pseudo-header sum, hdrs[i] says NEEDS_CSUM), as the kernel handed the
// super-packet over: nothing sums the payload.
//
// head is the start of the packet, in place at bufs[0][offset:], and holds
// at least all its headers; tail, possibly empty, is the rest. Segment 0
// stays where it is (its data is not copied); segment i > 0 is copied into
// bufs[i][offset:]. It returns the number of segments and ErrTooManySegments
// when bufs runs out first (the segments returned are valid), or 0 and
// ErrDropped when the packet cannot be split.
func splitGSO(h VirtioNetHdr, head, tail []byte, bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int) (int, error) {
	if len(head) < header.IPv4MinimumSize || header.IPVersion(head) != header.IPv4Version {
		return 0, ErrDropped // no IPv6 on the device
	}
	ihl := int(header.IPv4(head).HeaderLength())
	if ihl < header.IPv4MinimumSize {
		return 0, ErrDropped
	}
	// The header length comes from the packet, not from h.HdrLen, which
	// the kernel may set to more than the headers (wireguard-go found it
	// equal to the whole first packet on forwarded traffic).
	var hdrLen, csumOffset int
	var proto tcpip.TransportProtocolNumber
	switch h.GSOType & virtioNetHdrGSOTypeMask {
	case VirtioNetHdrGSOTCPv4:
		if len(head) < ihl+header.TCPMinimumSize {
			return 0, ErrDropped
		}
		tcpLen := int(header.TCP(head[ihl:]).DataOffset())
		if tcpLen < header.TCPMinimumSize {
			return 0, ErrDropped
		}
		hdrLen, csumOffset, proto = ihl+tcpLen, header.TCPChecksumOffset, header.TCPProtocolNumber
	case VirtioNetHdrGSOUDPL4:
		hdrLen, csumOffset, proto = ihl+header.UDPMinimumSize, udpChecksumOffset, header.UDPProtocolNumber
	default:
		return 0, ErrDropped
	}
	gso := int(h.GSOSize)
	total := len(head) + len(tail)
	if len(head) < hdrLen || gso == 0 || hdrLen+gso > len(head) && hdrLen+gso < total {
		// Headers cut, no segment size, or a first segment too large for
		// the MTU-sized first buffer.
		return 0, ErrDropped
	}
	if header.IPv4(head).TransportProtocol() != proto {
		return 0, ErrDropped
	}
	seg := segmenter{hdrLen: hdrLen, ihl: ihl, gso: gso, proto: proto, csumOffset: csumOffset, total: total}
	// Segments 1..n first, while head still holds the original headers;
	// segment 0 last, in place.
	var err error
	n := 1
	for at := hdrLen + gso; at < total; at, n = at+gso, n+1 {
		if n >= len(bufs) || n >= len(sizes) || n >= len(hdrs) {
			err = ErrTooManySegments
			break
		}
		dataLen := min(gso, total-at)
		out := bufs[n][offset:]
		if len(out) < hdrLen+dataLen {
			return 0, ErrDropped // a buffer smaller than SlotSize promises
		}
		copy(out, head[:hdrLen])
		copyRange(out[hdrLen:hdrLen+dataLen], head, tail, at)
		sizes[n] = hdrLen + dataLen
		seg.fix(out[:hdrLen+dataLen], n, hdrs)
	}
	sizes[0] = hdrLen + min(gso, total-hdrLen)
	seg.fix(head[:sizes[0]], 0, hdrs)
	return n, err
}

// segmenter rewrites the copied headers of one segment of a super-packet.
type segmenter struct {
	hdrLen, ihl, gso, total int
	csumOffset              int
	proto                   tcpip.TransportProtocolNumber
}

// fix turns the super-packet's headers at the start of p, which holds
// segment i (headers and data), into that segment's and records its
// virtio-net header in hdrs[i].
func (s *segmenter) fix(p []byte, i int, hdrs []VirtioNetHdr) {
	p = p[:s.hdrLen+min(s.gso, s.total-s.hdrLen-i*s.gso)]
	ip := header.IPv4(p)
	ip.SetTotalLength(uint16(len(p)))
	ip.SetID(ip.ID() + uint16(i))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := p[s.ihl:]
	switch s.proto {
	case header.TCPProtocolNumber:
		tcp := header.TCP(l4)
		tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(i*s.gso))
		flags := tcp.Flags()
		if i > 0 {
			flags &^= header.TCPFlagCwr
		}
		if s.hdrLen+(i+1)*s.gso < s.total {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		tcp.SetFlags(uint8(flags))
	case header.UDPProtocolNumber:
		header.UDP(l4).SetLength(uint16(len(l4)))
	}
	sum := header.PseudoHeaderChecksum(s.proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	binary.BigEndian.PutUint16(l4[s.csumOffset:], sum)
	hdrs[i] = VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: uint16(s.ihl), CsumOffset: uint16(s.csumOffset)}
}

// copyRange copies into dst the bytes of head+tail that start at off.
func copyRange(dst, head, tail []byte, off int) {
	if off < len(head) {
		n := copy(dst, head[off:])
		dst, off = dst[n:], len(head)
	}
	copy(dst, tail[off-len(head):])
}

// udpChecksumOffset is where the checksum sits in a UDP header (RFC 768).
const udpChecksumOffset = 6
