package stack

import (
	"testing"

	"github.com/uloop/uloop/tundev/tundevtest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// newCaptureStack starts a stack on an in-memory device whose written
// packets arrive on out; the stack closes when the test ends.
func newCaptureStack(t *testing.T, cfg Config) (*Stack, *tundevtest.Device, <-chan []byte) {
	t.Helper()
	out := make(chan []byte, 8)
	cfg.Device = tundevtest.New(65535, 16, func(p []byte) { out <- p })
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, cfg.Device.(*tundevtest.Device), out
}

// ipv4Packet builds an IPv4 packet with a valid header checksum.
func ipv4Packet(src, dst [4]byte, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     tcpip.AddrFrom4(src),
		DstAddr:     tcpip.AddrFrom4(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}

// echoRequest builds an ICMP echo request.
func echoRequest(src, dst [4]byte, id, seq uint16, data []byte) []byte {
	m := make([]byte, header.ICMPv4MinimumSize+len(data))
	h := header.ICMPv4(m)
	h.SetType(header.ICMPv4Echo)
	h.SetIdent(id)
	h.SetSequence(seq)
	copy(m[header.ICMPv4MinimumSize:], data)
	h.SetChecksum(^checksum.Checksum(m, 0))
	return ipv4Packet(src, dst, header.ICMPv4ProtocolNumber, m)
}

// tcpSYN builds a TCP SYN with valid checksums.
func tcpSYN(src, dst [4]byte, srcPort, dstPort uint16) []byte {
	seg := make([]byte, header.TCPMinimumSize)
	tcp := header.TCP(seg)
	tcp.Encode(&header.TCPFields{
		SrcPort:    srcPort,
		DstPort:    dstPort,
		SeqNum:     1000,
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagSyn,
		WindowSize: 65535,
	})
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom4(src), tcpip.AddrFrom4(dst), uint16(len(seg)))
	tcp.SetChecksum(^checksum.Checksum(seg, sum))
	return ipv4Packet(src, dst, header.TCPProtocolNumber, seg)
}
