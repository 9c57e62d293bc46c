package stack

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// recordedWrites is a device write function that records what it is given.
type recordedWrites struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (r *recordedWrites) write(_ tundev.VirtioNetHdr, pkt [][]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts = append(r.pkts, bytes.Join(pkt, nil))
	return nil
}

func (r *recordedWrites) written() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.pkts...)
}

// segment builds an outbound TCP segment from 127.0.0.1:port to
// 127.0.0.2:80 as gVisor hands it over: headers in one slice, the payload
// in another.
func segment(port uint16, flags header.TCPFlags, ack uint32, payload []byte) [][]byte {
	hdr := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(hdr)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(hdr) + len(payload)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4([4]byte{127, 0, 0, 1}),
		DstAddr:     tcpip.AddrFrom4([4]byte{127, 0, 0, 2}),
	})
	header.TCP(hdr[header.IPv4MinimumSize:]).Encode(&header.TCPFields{
		SrcPort: port, DstPort: 80, SeqNum: 1, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000,
	})
	if len(payload) == 0 {
		return [][]byte{hdr}
	}
	return [][]byte{hdr, payload}
}

func TestACKHolder(t *testing.T) {
	ack := header.TCPFlagAck
	data := []byte("reply")
	for _, tt := range []struct {
		name      string
		send      [][][]byte
		want      []int // indexes into send, in the order written
		coalesced uint64
	}{
		{"reply carries the ACK", [][][]byte{segment(1, ack, 100, nil), segment(1, ack|header.TCPFlagPsh, 100, data)}, []int{1}, 1},
		{"FIN carries the ACK", [][][]byte{segment(1, ack, 100, nil), segment(1, ack|header.TCPFlagFin, 100, nil)}, []int{1}, 1},
		{"other flow does not", [][][]byte{segment(1, ack, 100, nil), segment(2, ack|header.TCPFlagPsh, 100, data)}, []int{1}, 0},
		{"second ACK acknowledging more", [][][]byte{segment(1, ack, 100, nil), segment(1, ack, 200, nil)}, []int{1}, 1},
		{"duplicate ACKs all go", [][][]byte{segment(1, ack, 100, nil), segment(1, ack, 100, nil)}, []int{0, 1}, 0},
		{"handshake ACK is not held", [][][]byte{segment(1, header.TCPFlagSyn, 0, nil), segment(1, ack, 100, nil)}, []int{0, 1}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var rec recordedWrites
			var m Metrics
			h := newACKHolder(rec.write, &m)
			// Long enough that the timer cannot fire between the two
			// sends, however the test is scheduled (at 500 us it did,
			// about once in 100 runs on a loaded machine).
			h.hold = 300 * time.Millisecond
			for _, p := range tt.send {
				if err := h.send(tundev.VirtioNetHdr{}, p); err != nil {
					t.Fatal(err)
				}
			}
			got := rec.written()
			if len(got) != len(tt.want) {
				t.Fatalf("written right away: %d packets, want %d", len(got), len(tt.want))
			}
			for i, j := range tt.want {
				if !bytes.Equal(got[i], bytes.Join(tt.send[j], nil)) {
					t.Errorf("write %d: not packet %d", i, j)
				}
			}
			if c := m.ACKsCoalesced.Load(); c != tt.coalesced {
				t.Errorf("ACKsCoalesced = %d, want %d", c, tt.coalesced)
			}
			// Whatever is still held goes out by itself.
			held := len(tt.send) - len(tt.want) - int(tt.coalesced)
			deadline := time.Now().Add(h.hold + 2*time.Second)
			for len(rec.written()) < len(tt.want)+held && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := len(rec.written()); n != len(tt.want)+held {
				t.Errorf("after the hold time: %d packets written, want %d", n, len(tt.want)+held)
			}
			h.stop()
		})
	}
}

// TestACKHolderTimer: a held ACK that nothing carries is written within
// about ackHoldTime, and stop drops what is still held.
func TestACKHolderTimer(t *testing.T) {
	var rec recordedWrites
	var m Metrics
	h := newACKHolder(rec.write, &m)
	start := time.Now()
	h.send(tundev.VirtioNetHdr{}, segment(1, header.TCPFlagAck, 100, nil))
	for len(rec.written()) == 0 {
		if time.Since(start) > time.Second {
			t.Fatal("held ACK not written within 1 s")
		}
		time.Sleep(50 * time.Microsecond)
	}
	if d := time.Since(start); d < ackHoldTime {
		t.Errorf("held ACK written after %v, want at least %v", d, ackHoldTime)
	}
	h.send(tundev.VirtioNetHdr{}, segment(2, header.TCPFlagAck, 100, nil))
	h.stop()
	time.Sleep(2 * ackHoldTime)
	if n := len(rec.written()); n != 1 {
		t.Errorf("after stop: %d packets written, want 1", n)
	}
}
