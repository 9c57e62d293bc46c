package stack

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// udpDatagram builds an IPv4 UDP datagram from 127.0.0.1:srcPort to
// 127.0.0.2:53 as the link endpoint hands it over: headers in one view with
// the pseudo-header sum in the checksum field (partialChecksum), the
// payload in another.
func udpDatagram(srcPort uint16, id uint16, payload []byte) (tundev.VirtioNetHdr, [][]byte) {
	hdr := make([]byte, udpGSOHeaders)
	ip := header.IPv4(hdr)
	src, dst := tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), tcpip.AddrFrom4([4]byte{127, 0, 0, 2})
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(udpGSOHeaders + len(payload)),
		ID:          id,
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	udpLen := uint16(header.UDPMinimumSize + len(payload))
	header.UDP(hdr[header.IPv4MinimumSize:]).Encode(&header.UDPFields{SrcPort: srcPort, DstPort: 53, Length: udpLen})
	binary.BigEndian.PutUint16(hdr[header.IPv4MinimumSize+udpChecksumOffset:], header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udpLen))
	vnet := tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFNeedsCsum, CsumStart: header.IPv4MinimumSize, CsumOffset: udpChecksumOffset}
	return vnet, [][]byte{hdr, payload}
}

// udpDatagram6 builds an IPv6 UDP datagram from fd75:6c6f:6f70::1 port
// srcPort to fd75:6c6f:6f70::2 port 53 as link6 hands it over: headers in
// one view with the full checksum gVisor computes, the payload in another,
// no virtio-net header.
func udpDatagram6(srcPort uint16, payload []byte) (tundev.VirtioNetHdr, [][]byte) {
	hlen := header.IPv6MinimumSize + header.UDPMinimumSize
	hdr := make([]byte, hlen)
	src := tcpip.AddrFrom16([16]byte{0xfd, 0x75, 0x6c, 0x6f, 0x6f, 0x70, 15: 1})
	dst := tcpip.AddrFrom16([16]byte{0xfd, 0x75, 0x6c, 0x6f, 0x6f, 0x70, 15: 2})
	udpLen := uint16(header.UDPMinimumSize + len(payload))
	header.IPv6(hdr).Encode(&header.IPv6Fields{PayloadLength: udpLen, TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
	u := header.UDP(hdr[header.IPv6MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: srcPort, DstPort: 53, Length: udpLen})
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udpLen))))
	return tundev.VirtioNetHdr{}, [][]byte{hdr, payload}
}

// kernelSegments does to a packet written with vnet what the kernel does
// before a socket gets it: a UDP GSO packet is cut into datagrams of
// GSOSize payload bytes, each with the headers adjusted to its length and
// its checksum completed; a single datagram just gets its checksum
// completed. It fails the test on a packet the kernel would reject.
func kernelSegments(t *testing.T, vnet tundev.VirtioNetHdr, pkt []byte) [][]byte {
	t.Helper()
	iplen := header.IPv4MinimumSize
	var src, dst tcpip.Address
	if header.IPVersion(pkt) == header.IPv6Version {
		iplen = header.IPv6MinimumSize
		ip := header.IPv6(pkt)
		if int(ip.PayloadLength()) != len(pkt)-iplen {
			t.Fatalf("IPv6 payload length %d for %d bytes", ip.PayloadLength(), len(pkt)-iplen)
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv4(pkt)
		if !ip.IsChecksumValid() || int(ip.TotalLength()) != len(pkt) {
			t.Fatalf("IPv4 header: checksum valid %v, total length %d for %d bytes", ip.IsChecksumValid(), ip.TotalLength(), len(pkt))
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	hlen := iplen + header.UDPMinimumSize
	udp := header.UDP(pkt[iplen:])
	if int(udp.Length()) != len(pkt)-iplen {
		t.Fatalf("UDP length %d for %d bytes", udp.Length(), len(pkt)-iplen)
	}
	seg := len(pkt) - hlen
	switch {
	case vnet == (tundev.VirtioNetHdr{}) && iplen == header.IPv6MinimumSize:
		// A whole IPv6 datagram with its checksum: it must be valid.
		if !udp.IsChecksumValid(src, dst, checksum.Checksum(udp.Payload(), 0)) {
			t.Fatal("IPv6 datagram written with an invalid checksum")
		}
		return [][]byte{pkt}
	case vnet.Flags != tundev.VirtioNetHdrFNeedsCsum || int(vnet.CsumStart) != iplen || vnet.CsumOffset != udpChecksumOffset:
		t.Fatalf("virtio-net header %+v: not a partial UDP checksum", vnet)
	}
	if want := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udp.Length()); udp.Checksum() != want {
		t.Fatalf("UDP checksum field %#x, want the pseudo-header sum %#x", udp.Checksum(), want)
	}
	switch vnet.GSOType {
	case tundev.VirtioNetHdrGSONone:
	case tundev.VirtioNetHdrGSOUDPL4:
		if int(vnet.HdrLen) != hlen || vnet.GSOSize == 0 {
			t.Fatalf("GSO header %+v", vnet)
		}
		seg = int(vnet.GSOSize)
	default:
		t.Fatalf("GSO type %d", vnet.GSOType)
	}
	var out [][]byte
	for data := pkt[hlen:]; len(data) > 0; {
		n := min(seg, len(data))
		d := append(append([]byte(nil), pkt[:hlen]...), data[:n]...)
		data = data[n:]
		if iplen == header.IPv4MinimumSize {
			dip := header.IPv4(d)
			dip.SetTotalLength(uint16(len(d)))
			dip.SetChecksum(0)
			dip.SetChecksum(^dip.CalculateChecksum())
		} else {
			header.IPv6(d).SetPayloadLength(uint16(len(d) - iplen))
		}
		du := header.UDP(d[iplen:])
		du.SetLength(uint16(len(d) - iplen))
		du.SetChecksum(header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, du.Length()))
		du.SetChecksum(^checksum.Checksum(d[iplen:], 0))
		if !du.IsChecksumValid(src, dst, checksum.Checksum(du.Payload(), 0)) {
			t.Fatal("datagram checksum not valid after completion")
		}
		out = append(out, d)
	}
	return out
}

// TestUDPGSO: datagrams a pump writes in one drain reach the kernel as few
// packets as can carry them, and each datagram comes out of the kernel's
// segmentation as it went in.
func TestUDPGSO(t *testing.T) {
	payload := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	type dgram struct {
		port    uint16
		payload []byte
		v6      bool
	}
	for _, tt := range []struct {
		name   string
		drain  bool // between begin and end
		sent   []dgram
		writes int // packets written
		gso    uint64
	}{
		{"outside a drain, one write each", false, []dgram{{1, payload(1000, 'a'), false}, {1, payload(1000, 'b'), false}}, 2, 0},
		{"one datagram as it came", true, []dgram{{1, payload(1000, 'a'), false}}, 1, 0},
		{"same size, one packet", true, []dgram{{1, payload(1000, 'a'), false}, {1, payload(1000, 'b'), false}, {1, payload(1000, 'c'), false}}, 1, 3},
		{"a shorter last one joins", true, []dgram{{1, payload(1000, 'a'), false}, {1, payload(1000, 'b'), false}, {1, payload(10, 'c'), false}}, 1, 3},
		{"nothing after a shorter one", true, []dgram{{1, payload(1000, 'a'), false}, {1, payload(10, 'b'), false}, {1, payload(10, 'c'), false}}, 2, 2},
		{"a longer one starts another", true, []dgram{{1, payload(500, 'a'), false}, {1, payload(1000, 'b'), false}}, 2, 0},
		{"another flow starts another", true, []dgram{{1, payload(1000, 'a'), false}, {1, payload(1000, 'b'), false}, {2, payload(1000, 'c'), false}, {2, payload(1000, 'd'), false}}, 2, 4},
		{"full at 64 KiB", true, func() (d []dgram) {
			for i := range 70 {
				d = append(d, dgram{1, payload(1400, byte(i)), false})
			}
			return d
		}(), 2, 70},
		{"IPv6, one packet", true, []dgram{{1, payload(1000, 'a'), true}, {1, payload(1000, 'b'), true}, {1, payload(7, 'c'), true}}, 1, 3},
		{"IPv6, one datagram as it came", true, []dgram{{1, payload(1000, 'a'), true}}, 1, 0},
		{"IPv4 then IPv6, two", true, []dgram{{1, payload(1000, 'a'), false}, {1, payload(1000, 'b'), false}, {1, payload(1000, 'c'), true}, {1, payload(1000, 'd'), true}}, 2, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			type written struct {
				vnet tundev.VirtioNetHdr
				pkt  []byte
			}
			var got []written
			var m Metrics
			g := newUDPGSO(func(vnet tundev.VirtioNetHdr, pkt [][]byte) error {
				got = append(got, written{vnet, bytes.Join(pkt, nil)})
				return nil
			}, &m)
			if tt.drain {
				g.begin()
			}
			for i, d := range tt.sent {
				vnet, pkt := udpDatagram(d.port, uint16(i), d.payload)
				if d.v6 {
					vnet, pkt = udpDatagram6(d.port, d.payload)
				}
				if !g.send(vnet, pkt) {
					// Not held: the link endpoint writes it.
					got = append(got, written{vnet, bytes.Join(pkt, nil)})
				}
			}
			if tt.drain {
				g.end()
			}
			if len(got) != tt.writes {
				t.Errorf("%d packets written, want %d", len(got), tt.writes)
			}
			if n := m.UDPGSODatagrams.Load(); n != tt.gso {
				t.Errorf("UDPGSODatagrams = %d, want %d", n, tt.gso)
			}
			var out [][]byte
			for _, w := range got {
				out = append(out, kernelSegments(t, w.vnet, w.pkt)...)
			}
			if len(out) != len(tt.sent) {
				t.Fatalf("%d datagrams out, want %d", len(out), len(tt.sent))
			}
			for i, d := range out {
				iplen := header.IPv4MinimumSize
				if header.IPVersion(d) == header.IPv6Version {
					iplen = header.IPv6MinimumSize
				}
				u := header.UDP(d[iplen:])
				if u.SourcePort() != tt.sent[i].port || !bytes.Equal(u.Payload(), tt.sent[i].payload) {
					t.Errorf("datagram %d: port %d, %d bytes; want port %d, the %d bytes sent", i, u.SourcePort(), len(u.Payload()), tt.sent[i].port, len(tt.sent[i].payload))
				}
			}
		})
	}
}

// TestUDPGSOLeavesOthers: what a UDP GSO packet cannot carry is never held,
// even in a drain: TCP, IPv4 with options, fragments, a GSO packet.
func TestUDPGSOLeavesOthers(t *testing.T) {
	g := newUDPGSO(func(tundev.VirtioNetHdr, [][]byte) error { return nil }, &Metrics{})
	g.begin()
	defer g.end()
	vnet, pkt := udpDatagram(1, 0, []byte("x"))
	tcpSeg := segment(1, header.TCPFlagAck, 1, []byte("x"))
	frag := [][]byte{append([]byte(nil), pkt[0]...), pkt[1]}
	header.IPv4(frag[0]).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	gsoVnet := vnet
	gsoVnet.GSOType = tundev.VirtioNetHdrGSOUDPL4
	for _, tt := range []struct {
		name string
		vnet tundev.VirtioNetHdr
		pkt  [][]byte
	}{
		{"TCP", tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFNeedsCsum, CsumStart: header.IPv4MinimumSize, CsumOffset: header.TCPChecksumOffset}, tcpSeg},
		{"fragment", vnet, frag},
		{"no partial checksum", tundev.VirtioNetHdr{}, pkt},
		{"already GSO", gsoVnet, pkt},
	} {
		if g.send(tt.vnet, tt.pkt) {
			t.Errorf("%s: held", tt.name)
		}
	}
}
