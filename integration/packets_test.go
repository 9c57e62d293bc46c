//go:build linux

package integration

// Hand-made packets, sent and seen through raw sockets inside a namespace.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ipHeader is what the tests choose of an IPv4 header. The kernel fills in
// the rest for an IP_HDRINCL socket (see rawSender).
type ipHeader struct {
	src, dst netip.Addr
	proto    tcpip.TransportProtocolNumber
	id       uint16
	more     bool   // the More Fragments flag
	offset   uint16 // fragment offset in bytes, a multiple of 8
	options  []byte // padded by ipPacket to a multiple of 4
}

// ipPacket builds an IPv4 packet with a valid header checksum.
func ipPacket(h ipHeader, payload []byte) []byte {
	opts := append([]byte(nil), h.options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // End of Option List
	}
	hl := header.IPv4MinimumSize + len(opts)
	b := make([]byte, hl+len(payload))
	ip := header.IPv4(b)
	var flags uint8
	if h.more {
		flags = header.IPv4FlagMoreFragments
	}
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		ID:          h.id,
		TTL:         64,
		Protocol:    uint8(h.proto),
		SrcAddr:     tcpip.AddrFrom4(h.src.As4()),
		DstAddr:     tcpip.AddrFrom4(h.dst.As4()),
	})
	ip.SetHeaderLength(uint8(hl))
	copy(b[header.IPv4MinimumSize:], opts)
	ip.SetFlagsFragmentOffset(flags, h.offset)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[hl:], payload)
	return b
}

// transportChecksum sets the checksum of a TCP or UDP header at the start of
// seg (which holds the whole segment) from the pseudo-header and every byte
// of seg. The field is at offset 16 in TCP, 6 in UDP.
func transportChecksum(proto tcpip.TransportProtocolNumber, src, dst netip.Addr, seg []byte) {
	at := 16
	if proto == header.UDPProtocolNumber {
		at = 6
	}
	binary.BigEndian.PutUint16(seg[at:], 0)
	xsum := header.PseudoHeaderChecksum(proto, tcpip.AddrFrom4(src.As4()), tcpip.AddrFrom4(dst.As4()), uint16(len(seg)))
	binary.BigEndian.PutUint16(seg[at:], ^checksum.Checksum(seg, xsum))
}

// tcpSeg is what the tests choose of a TCP segment.
type tcpSeg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	payload  []byte
	// dataOffset overrides the header length field (bytes); 0 means 20.
	dataOffset uint8
}

// tcpPacket builds the IPv4 packet carrying s, with a correct TCP checksum.
func tcpPacket(s tcpSeg) []byte {
	seg := make([]byte, header.TCPMinimumSize+len(s.payload))
	header.TCP(seg).Encode(&header.TCPFields{
		SrcPort:    s.src.Port(),
		DstPort:    s.dst.Port(),
		SeqNum:     s.seq,
		AckNum:     s.ack,
		DataOffset: header.TCPMinimumSize,
		Flags:      s.flags,
		WindowSize: 65535,
	})
	if s.dataOffset != 0 {
		seg[12] = (s.dataOffset / 4) << 4
	}
	copy(seg[header.TCPMinimumSize:], s.payload)
	transportChecksum(header.TCPProtocolNumber, s.src.Addr(), s.dst.Addr(), seg)
	return ipPacket(ipHeader{src: s.src.Addr(), dst: s.dst.Addr(), proto: header.TCPProtocolNumber}, seg)
}

// udpSegment builds a UDP header and payload with a correct checksum.
func udpSegment(src, dst netip.AddrPort, payload []byte) []byte {
	seg := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(seg).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(seg))})
	copy(seg[header.UDPMinimumSize:], payload)
	transportChecksum(header.UDPProtocolNumber, src.Addr(), dst.Addr(), seg)
	return seg
}

// corruptTransportChecksum flips bits of the TCP (offset 16) or UDP (6)
// checksum of the IPv4 packet pkt, keeping it non-zero (a zero UDP checksum
// means "none").
func corruptTransportChecksum(pkt []byte) []byte {
	ip := header.IPv4(pkt)
	at := int(ip.HeaderLength()) + 16
	if ip.TransportProtocol() == header.UDPProtocolNumber {
		at = int(ip.HeaderLength()) + 6
	}
	pkt[at] ^= 0x5a
	if pkt[at] == 0 && pkt[at+1] == 0 {
		pkt[at+1] = 1
	}
	return pkt
}

// echoPacket builds an ICMP echo request with a correct checksum.
func echoPacket(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	m := make([]byte, header.ICMPv4MinimumSize+len(data))
	h := header.ICMPv4(m)
	h.SetType(header.ICMPv4Echo)
	h.SetIdent(id)
	h.SetSequence(seq)
	copy(m[header.ICMPv4MinimumSize:], data)
	h.SetChecksum(^checksum.Checksum(m, 0))
	return ipPacket(ipHeader{src: src, dst: dst, proto: header.ICMPv4ProtocolNumber}, m)
}

// rawSender sends whole IPv4 packets from inside a namespace through an
// IPPROTO_RAW socket (IP_HDRINCL implied). Locally generated, they take the
// same route as any socket's: to 127/8 that is ulo0 while uloopd runs.
//
// What the kernel changes (raw_send_hdrinc, net/ipv4/raw.c; seen on 6.x):
// it always rewrites the header checksum and the total length, fills in the
// ID if it is 0 and the source if it is 0.0.0.0, and refuses (EINVAL) a
// header length beyond the packet. A bad IP checksum or a lying total length
// cannot be sent this way; everything past the IP header (transport
// checksums, lengths, offsets), fragment fields, options and any source
// address (127/8, multicast, broadcast) go out as built.
type rawSender struct {
	fd int
}

func newRawSender(t *testing.T, ns *netNS) *rawSender {
	t.Helper()
	fd := -1
	if err := ns.do(func() (err error) {
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatalf("raw socket (IPPROTO_RAW) in %s: %v", ns, err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return &rawSender{fd: fd}
}

// send sends pkt to its destination address.
func (r *rawSender) send(t *testing.T, pkt []byte) {
	t.Helper()
	to := &syscall.SockaddrInet4{Addr: header.IPv4(pkt).DestinationAddress().As4()}
	for {
		err := syscall.Sendto(r.fd, pkt, 0, to)
		if errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN) {
			// The TUN's queue is full for a moment (a flood).
			time.Sleep(100 * time.Microsecond)
			continue
		}
		if err != nil {
			t.Fatalf("sendto %s (%d bytes): %v", to.Addr, len(pkt), err)
		}
		return
	}
}

// tcpTap sees the TCP segments between two ports that the kernel delivers to
// local sockets in a namespace: a raw IPPROTO_TCP socket gets a copy of each
// TCP segment, and a socket filter keeps those of the pair, so that other
// traffic cannot crowd them out of its queue.
type tcpTap struct {
	fd   int
	last map[[2]netip.AddrPort]seqAck // the newest numbers seen, by (from, to)
}

func newTCPTap(t *testing.T, ns *netNS, portA, portB uint16) *tcpTap {
	t.Helper()
	// The packet starts at the IP header; X = its length.
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadMemShift{Off: 0},
		bpf.LoadIndirect{Off: 0, Size: 2}, // source port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(portA), SkipFalse: 3},
		bpf.LoadIndirect{Off: 2, Size: 2}, // destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(portB), SkipTrue: 5},
		bpf.RetConstant{Val: 0},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(portB), SkipFalse: 2},
		bpf.LoadIndirect{Off: 2, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(portA), SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 0xffff},
	})
	if err != nil {
		t.Fatalf("assembling the tap's filter: %v", err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fd := -1
	if err := ns.do(func() (err error) {
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatalf("raw socket (IPPROTO_TCP) in %s: %v", ns, err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	// A socket gets packets from creation on; ones that came before the
	// filter are drained by latest's filtering too.
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
		t.Fatalf("SO_ATTACH_FILTER: %v", err)
	}
	tv := syscall.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &tcpTap{fd: fd, last: map[[2]netip.AddrPort]seqAck{}}
}

// seqAck is the sequence and acknowledgment numbers of one segment.
type seqAck struct{ seq, ack uint32 }

func (s seqAck) String() string { return fmt.Sprintf("seq %d ack %d", s.seq, s.ack) }

// latest returns the numbers of the last ACK-carrying segment from src to
// dst. It reads what has come (waiting up to timeout if nothing of that
// direction has been seen yet) until no segment of the pair has come for
// 50 ms, so that on an idle connection the result is its current state.
func (tp *tcpTap) latest(t *testing.T, src, dst netip.AddrPort, timeout time.Duration) seqAck {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(timeout)
	for {
		n, _, err := syscall.Recvfrom(tp.fd, buf, 0)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			if last, ok := tp.last[[2]netip.AddrPort{src, dst}]; ok {
				return last
			}
			if time.Now().After(deadline) {
				t.Fatalf("tcp tap: no segment %s -> %s within %v", src, dst, timeout)
			}
			continue
		}
		if err != nil {
			t.Fatalf("tcp tap: recvfrom: %v", err)
		}
		ip := header.IPv4(buf[:n])
		if n < header.IPv4MinimumSize || int(ip.HeaderLength())+header.TCPMinimumSize > n {
			continue
		}
		tcp := header.TCP(buf[ip.HeaderLength():n])
		if !tcp.Flags().Contains(header.TCPFlagAck) {
			continue
		}
		from := netip.AddrPortFrom(netip.AddrFrom4(ip.SourceAddress().As4()), tcp.SourcePort())
		to := netip.AddrPortFrom(netip.AddrFrom4(ip.DestinationAddress().As4()), tcp.DestinationPort())
		tp.last[[2]netip.AddrPort{from, to}] = seqAck{tcp.SequenceNumber(), tcp.AckNumber()}
	}
}
