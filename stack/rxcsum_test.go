package stack

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// partialSYN is a TCP SYN as the kernel hands one over with checksum
// offload: its checksum field holds only the pseudo-header sum, and the
// virtio-net header it comes with says so.
func partialSYN(src, dst [4]byte, srcPort, dstPort uint16) ([]byte, tundev.VirtioNetHdr) {
	pkt := tcpSYN(src, dst, srcPort, dstPort)
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom4(src), tcpip.AddrFrom4(dst), uint16(len(tcp))))
	return pkt, tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFNeedsCsum, CsumStart: header.IPv4MinimumSize, CsumOffset: header.TCPChecksumOffset}
}

// TestTrustedChecksum: a packet is checksummed only if the kernel did not
// vouch for it. A SYN with a partial checksum is relayed when its header
// says NEEDS_CSUM (the kernel built it), and the same bytes with no such
// word (as a raw socket would write them) are a counted drop; a
// packet marked DATA_VALID is taken as the kernel verified it. It also
// guards what the link endpoint relies on: that gVisor reads the link's
// capabilities for every packet delivered.
func TestTrustedChecksum(t *testing.T) {
	s, dev, out := newCaptureStack(t, Config{})
	// A SYN to no endpoint is checked on the forwarder's path, which
	// counts a bad checksum under another reason than an established
	// connection's segment: count them all.
	drops := func() (n uint64) {
		for _, v := range s.Drops() {
			n += v
		}
		return n
	}
	expectSYN := func(what string) {
		t.Helper()
		select {
		case p := <-out:
			if tcp := header.TCP(p[header.IPv4(p).HeaderLength():]); tcp.Flags() != header.TCPFlagSyn {
				t.Errorf("%s: the stack sent flags %v, want the relay's SYN", what, tcp.Flags())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not relayed", what)
		}
	}
	lo := [4]byte{127, 0, 0, 1}

	pkt, partial := partialSYN(lo, [4]byte{127, 0, 0, 2}, 4000, 80)
	dev.InjectWith(partial, pkt)
	expectSYN("SYN with a partial checksum, NEEDS_CSUM")
	if got := drops(); got != 0 {
		t.Errorf("drops = %d after a trusted SYN, want 0", got)
	}

	pkt, _ = partialSYN(lo, [4]byte{127, 0, 0, 3}, 4000, 80)
	dev.Inject(pkt)
	select {
	case p := <-out:
		t.Fatalf("SYN with a bad checksum and no offload flag: the stack sent % x, want it dropped", p)
	case <-time.After(300 * time.Millisecond):
	}
	if got := drops(); got != 1 {
		t.Errorf("drops = %d after an unverified bad SYN, want 1 (%v)", got, s.Drops())
	}

	pkt, _ = partialSYN(lo, [4]byte{127, 0, 0, 4}, 4000, 80)
	dev.InjectWith(tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFDataValid}, pkt)
	expectSYN("SYN marked DATA_VALID")
	if got := drops(); got != 1 {
		t.Errorf("drops = %d, want still 1 (%v)", got, s.Drops())
	}
}

// TestPassthroughPartialChecksum: a packet handed back to the kernel keeps
// the partial checksum the kernel gave it, and the word that says so, so
// that it arrives with a valid checksum (the device completes it) and
// nobody sums it in user space.
func TestPassthroughPartialChecksum(t *testing.T) {
	_, dev, out := newCaptureStack(t, Config{})
	lo := [4]byte{127, 0, 0, 1}
	pkt, partial := partialSYN(lo, lo, 4000, 4000) // TCP to itself
	dev.InjectWith(partial, pkt)
	select {
	case p := <-out:
		ip := header.IPv4(p)
		tcp := header.TCP(p[ip.HeaderLength():])
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
		if checksum.Checksum(tcp, sum) != 0xffff {
			t.Errorf("passed-through SYN arrived with checksum %#04x, not valid", binary.BigEndian.Uint16(tcp[header.TCPChecksumOffset:]))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("packet not passed through")
	}
}
