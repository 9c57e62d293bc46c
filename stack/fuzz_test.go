package stack

import (
	"testing"
	"time"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzInbound feeds arbitrary bytes to the stack as packets read from the
// TUN device. Whatever they are, nothing may panic, and every packet buffer
// must be released (TestMain's leak check fails the run otherwise): bad
// packets are only counted. Crashers found are kept in testdata/fuzz.
//
//	go test -run '^$' -fuzz FuzzInbound -fuzztime 30s ./stack/
func FuzzInbound(f *testing.F) {
	syn := make([]byte, header.TCPMinimumSize)
	header.TCP(syn).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	udp := make([]byte, header.UDPMinimumSize+4)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: 40000, DstPort: 53, Length: uint16(len(udp))})
	lo := [4]byte{127, 0, 0, 1}
	for _, seed := range [][]byte{
		ipv4Packet(lo, lo, header.TCPProtocolNumber, syn),
		ipv4Packet(lo, [4]byte{127, 9, 9, 9}, header.UDPProtocolNumber, udp),
		echoRequest(lo, lo, 1, 1, []byte("fuzz")),
		ipv4Packet(lo, lo, 253, []byte("other protocol")),
		{0x45, 0, 0, 20},
		{0x60, 0, 0, 0, 0, 0, 6, 64},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > maxIPv4PacketSize {
			return
		}
		s, err := New(Config{Device: newDiscardDevice(), dialTimeout: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.link.mu.Lock()
		d := s.link.dispatcher
		s.link.mu.Unlock()
		s.link.deliver(d, buffer.NewViewWithData(pkt), tundev.VirtioNetHdr{})
	})
}
