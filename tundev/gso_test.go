package tundev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// superPacket builds an IPv4 GSO super-packet as the kernel hands one over:
// payload behind one set of headers, the transport checksum partial.
func superPacket(proto tcpip.TransportProtocolNumber, payload []byte, gso int, flags header.TCPFlags) ([]byte, VirtioNetHdr) {
	src, dst := tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), tcpip.AddrFrom4([4]byte{127, 0, 0, 2})
	l4len, gsoType, field := header.TCPMinimumSize+12, uint8(VirtioNetHdrGSOTCPv4), header.TCPChecksumOffset
	if proto == header.UDPProtocolNumber {
		l4len, gsoType, field = header.UDPMinimumSize, VirtioNetHdrGSOUDPL4, udpChecksumOffset
	}
	p := make([]byte, header.IPv4MinimumSize+l4len+len(payload))
	ip := header.IPv4(p)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), ID: 1000, TTL: 64, Protocol: uint8(proto), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := p[header.IPv4MinimumSize:]
	if proto == header.TCPProtocolNumber {
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 5201, SeqNum: 0xfffff000, AckNum: 7, DataOffset: uint8(l4len), Flags: flags, WindowSize: 512})
	} else {
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: 40000, DstPort: 5201, Length: uint16(len(l4))})
	}
	copy(p[header.IPv4MinimumSize+l4len:], payload)
	binary.BigEndian.PutUint16(l4[field:], header.PseudoHeaderChecksum(proto, src, dst, uint16(len(l4))))
	return p, VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: gsoType, HdrLen: uint16(header.IPv4MinimumSize + l4len), GSOSize: uint16(gso), CsumStart: header.IPv4MinimumSize, CsumOffset: uint16(field)}
}

// TestSplitGSO: a super-packet comes back as the segments the kernel's GSO
// would have made, with valid IPv4 headers, partial transport checksums
// that complete to valid ones, the payload intact and in order, and TCP
// sequence numbers and flags as on the wire, whether the packet fits the
// first buffer or spills past it.
func TestSplitGSO(t *testing.T) {
	const batch = 128
	payload := make([]byte, 65535-header.IPv4MinimumSize-header.TCPMinimumSize-12)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, proto := range []tcpip.TransportProtocolNumber{header.TCPProtocolNumber, header.UDPProtocolNumber} {
		for _, tc := range []struct{ mtu, gso, size int }{
			{65535, 1448, 65000}, {1500, 1448, 65000}, {1500, 1000, 1001}, {9000, 8948, 30000}, {1500, 1448, 1449}, {65535, 21000, 63000},
		} {
			t.Run(fmt.Sprintf("%v/mtu-%d/gso-%d/%d", proto, tc.mtu, tc.gso, tc.size), func(t *testing.T) {
				pkt, h := superPacket(proto, payload[:tc.size], tc.gso, header.TCPFlagAck|header.TCPFlagPsh|header.TCPFlagFin|header.TCPFlagCwr)
				orig := append([]byte(nil), pkt...)
				bufs := make([][]byte, batch)
				for i := range bufs {
					bufs[i] = make([]byte, SlotSize(i, tc.mtu))
				}
				// As Read lays it out: what fits in place, the rest spilled.
				k := copy(bufs[0], pkt)
				head, tail := bufs[0][:k], pkt[k:]
				sizes, hdrs := make([]int, batch), make([]VirtioNetHdr, batch)
				n, err := splitGSO(h, head, tail, bufs, sizes, hdrs, 0)
				if err != nil {
					t.Fatal(err)
				}
				hdrLen := int(h.HdrLen)
				if want := (tc.size + tc.gso - 1) / tc.gso; n != want {
					t.Fatalf("%d segments, want %d", n, want)
				}
				var got []byte
				for i := 0; i < n; i++ {
					seg := bufs[i][:sizes[i]]
					ip := header.IPv4(seg)
					if !ip.IsValid(len(seg)) || !ip.IsChecksumValid() {
						t.Fatalf("segment %d: bad IPv4 header % x", i, seg[:20])
					}
					if ip.ID() != 1000+uint16(i) {
						t.Errorf("segment %d: IP ID %d, want %d", i, ip.ID(), 1000+i)
					}
					if hdrs[i] != (VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: h.CsumStart, CsumOffset: h.CsumOffset}) {
						t.Errorf("segment %d: virtio-net header %+v", i, hdrs[i])
					}
					// Complete the partial checksum as the device would,
					// then check it as a receiver would.
					l4 := append([]byte(nil), seg[header.IPv4MinimumSize:]...)
					binary.BigEndian.PutUint16(l4[h.CsumOffset:], ^checksum.Checksum(l4, 0))
					if checksum.Checksum(l4, header.PseudoHeaderChecksum(proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))) != 0xffff {
						t.Errorf("segment %d: transport checksum does not complete to a valid one", i)
					}
					last := i == n-1
					if proto == header.TCPProtocolNumber {
						tcp := header.TCP(seg[header.IPv4MinimumSize:])
						if want := uint32(0xfffff000) + uint32(i*tc.gso); tcp.SequenceNumber() != want {
							t.Errorf("segment %d: seq %#x, want %#x", i, tcp.SequenceNumber(), want)
						}
						want := header.TCPFlagAck
						if i == 0 {
							want |= header.TCPFlagCwr
						}
						if last {
							want |= header.TCPFlagPsh | header.TCPFlagFin
						}
						if tcp.Flags() != want {
							t.Errorf("segment %d: flags %v, want %v", i, tcp.Flags(), want)
						}
					} else if l := header.UDP(seg[header.IPv4MinimumSize:]).Length(); int(l) != len(seg)-header.IPv4MinimumSize {
						t.Errorf("segment %d: UDP length %d, want %d", i, l, len(seg)-header.IPv4MinimumSize)
					}
					if !last && len(seg) != hdrLen+tc.gso {
						t.Errorf("segment %d: %d bytes, want %d", i, len(seg), hdrLen+tc.gso)
					}
					got = append(got, seg[hdrLen:]...)
				}
				if !bytes.Equal(got, orig[hdrLen:]) {
					t.Error("payload changed by the split")
				}
			})
		}
	}
}

// TestSplitGSOErrors: a batch too small for the split returns the segments
// that fit and ErrTooManySegments; a packet that cannot be split is
// ErrDropped, never a fatal error.
func TestSplitGSOErrors(t *testing.T) {
	payload := make([]byte, 10000)
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	sizes, hdrs := make([]int, 3), make([]VirtioNetHdr, 3)
	pkt, h := superPacket(header.TCPProtocolNumber, payload, 1000, header.TCPFlagAck)
	k := copy(bufs[0], pkt)
	n, err := splitGSO(h, bufs[0][:k], pkt[k:], bufs, sizes, hdrs, 0)
	if n != 3 || !errors.Is(err, ErrTooManySegments) {
		t.Errorf("10 segments into 3 buffers: %d, %v; want 3, ErrTooManySegments", n, err)
	}
	for i := range n {
		if !header.IPv4(bufs[i][:sizes[i]]).IsChecksumValid() {
			t.Errorf("segment %d of a cut split: bad IPv4 header", i)
		}
	}
	for name, mangle := range map[string]func(p []byte, h *VirtioNetHdr){
		"unknown GSO type":   func(p []byte, h *VirtioNetHdr) { h.GSOType = VirtioNetHdrGSOUDP },
		"IPv6 GSO":           func(p []byte, h *VirtioNetHdr) { p[0] = 0x60 },
		"gso_size 0":         func(p []byte, h *VirtioNetHdr) { h.GSOSize = 0 },
		"TCP type, UDP body": func(p []byte, h *VirtioNetHdr) { p[9] = byte(header.UDPProtocolNumber) },
		"segment over MTU":   func(p []byte, h *VirtioNetHdr) { h.GSOSize = 1490 },
		"TCP header short":   func(p []byte, h *VirtioNetHdr) { p[header.IPv4MinimumSize+12] = 0x10 },
	} {
		pkt, h := superPacket(header.TCPProtocolNumber, payload, 1000, header.TCPFlagAck)
		mangle(pkt, &h)
		k := copy(bufs[0], pkt)
		if n, err := splitGSO(h, bufs[0][:k], pkt[k:], bufs, sizes, hdrs, 0); n != 0 || !errors.Is(err, ErrDropped) {
			t.Errorf("%s: %d, %v; want 0, ErrDropped", name, n, err)
		}
	}
}

// FuzzSplitGSO: whatever header and bytes the kernel hands over, the split
// never panics, never writes past a buffer, and returns either segments
// that fit their buffers or an error that is not fatal.
//
//	go test -run '^$' -fuzz FuzzSplitGSO -fuzztime 30s ./tundev/
func FuzzSplitGSO(f *testing.F) {
	pkt, h := superPacket(header.TCPProtocolNumber, make([]byte, 5000), 1000, header.TCPFlagAck)
	f.Add(pkt, h.GSOType, h.GSOSize, uint16(1500))
	pkt, h = superPacket(header.UDPProtocolNumber, make([]byte, 3000), 1400, 0)
	f.Add(pkt, h.GSOType, h.GSOSize, uint16(1500))
	f.Add([]byte{0x45}, uint8(VirtioNetHdrGSOTCPv4), uint16(1), uint16(1280))
	slots := make([][]byte, 16) // reused: allocating them per input is most of the time
	for i := range slots {
		slots[i] = make([]byte, SlotSize(i, DefaultMTU))
	}
	f.Fuzz(func(t *testing.T, pkt []byte, gsoType uint8, gsoSize uint16, m uint16) {
		mtu := max(int(m), 1280)
		if len(pkt) > maxSuperPacket {
			return
		}
		bufs := make([][]byte, len(slots))
		for i := range bufs {
			bufs[i] = slots[i][:SlotSize(i, mtu)]
		}
		k := copy(bufs[0], pkt)
		sizes, hdrs := make([]int, len(bufs)), make([]VirtioNetHdr, len(bufs))
		h := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: gsoType, GSOSize: gsoSize, CsumStart: 20, CsumOffset: 16}
		n, err := splitGSO(h, bufs[0][:k], pkt[k:], bufs, sizes, hdrs, 0)
		if err != nil && !errors.Is(err, ErrDropped) && !errors.Is(err, ErrTooManySegments) {
			t.Fatalf("fatal error %v", err)
		}
		if errors.Is(err, ErrDropped) && n != 0 {
			t.Fatalf("dropped, yet %d segments", n)
		}
		for i := range n {
			if sizes[i] > len(bufs[i]) || sizes[i] < header.IPv4MinimumSize {
				t.Fatalf("segment %d: size %d in a %d-byte buffer", i, sizes[i], len(bufs[i]))
			}
		}
	})
}
