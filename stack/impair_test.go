package stack

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/impair"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func impairTable(t *testing.T, specs ...string) *impair.Table {
	t.Helper()
	tab := new(impair.Table)
	for _, s := range specs {
		if _, err := tab.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return tab
}

// TestImpairEcho: an echo request to an impaired address is delayed on the
// way in and its reply on the way out, so the round trip takes twice the
// delay; another address answers at once, and a blackholed one not at all.
func TestImpairEcho(t *testing.T) {
	tab := impairTable(t, "icmp addr=127.0.0.9 delay=30ms", "all addr=127.0.0.8 blackhole")
	s, dev, out := newCaptureStack(t, Config{Impair: tab})
	rtt := func(dst [4]byte) (time.Duration, bool) {
		start := time.Now()
		dev.Inject(echoRequest([4]byte{127, 0, 0, 1}, dst, 1, 1, []byte("x")))
		select {
		case <-out:
			return time.Since(start), true
		case <-time.After(300 * time.Millisecond):
			return 0, false
		}
	}
	fast, ok := rtt([4]byte{127, 0, 0, 1})
	if !ok || fast > 30*time.Millisecond {
		t.Errorf("unimpaired echo: %v, %v; want a reply well within the delay", fast, ok)
	}
	slow, ok := rtt([4]byte{127, 0, 0, 9})
	if !ok || slow < 60*time.Millisecond {
		t.Errorf("delayed echo: %v, %v; want a reply after at least 2 x 30ms", slow, ok)
	}
	if _, ok := rtt([4]byte{127, 0, 0, 8}); ok {
		t.Error("blackholed address answered")
	}
	rules := s.Impair().Rules()
	if got := rules[0].Counters.Delayed.Load(); got != 2 {
		t.Errorf("delay rule delayed %d packets, want 2 (request and reply)", got)
	}
	if got := rules[1].Counters.Blackholed.Load(); got != 1 {
		t.Errorf("blackhole rule dropped %d packets, want 1", got)
	}
}

// TestImpairLossTCP: with a lossy port the kernel's TCP (here the fake
// kernel's) retransmits, and every byte arrives intact. At MTU 1500 a
// lost segment is mostly recovered by fast retransmit; with 64 KiB
// segments and 20% loss, recovery leaned on backed-off retransmission
// timeouts and once took over 60 s on a loaded machine.
func TestImpairLossTCP(t *testing.T) {
	tab := impairTable(t, "tcp:8010 loss=5%")
	k := newFakeKernel(t, 1500)
	newTestStack(t, k, Config{Impair: tab})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8010), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8010), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, payload) {
			t.Errorf("server got %d bytes, not the %d sent", len(b), len(payload))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not finish")
	}
	if lost := tab.Rules()[0].Counters.Lost.Load(); lost == 0 {
		t.Error("no packet was lost: the rule did not act")
	}
}

// TestImpairResetAfterBytes: a connection is reset once the set number of
// bytes went to the server: the server read exactly that many, then both
// ends see a reset.
func TestImpairResetAfterBytes(t *testing.T) {
	const limit = 100000
	tab := impairTable(t, "tcp:8011 reset-after=100000B dir=to-server")
	k := newFakeKernel(t, 65535)
	newTestStack(t, k, Config{Impair: tab})
	ln, err := gonet.ListenTCP(k.gv, addr4(127, 0, 0, 1, 8011), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int
		err error
	}
	srv := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, c)
		srv <- result{int(n), err}
	}()
	c, err := gonet.DialTCP(k.gv, addr4(127, 0, 0, 1, 8011), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var werr error
	for range 100 {
		if _, werr = c.Write(make([]byte, 64<<10)); werr != nil {
			break
		}
	}
	_, rerr := c.Read(make([]byte, 1))
	r := <-srv
	if r.n != limit || !isReset(r.err) {
		t.Errorf("server read %d bytes then %v; want %d then a reset", r.n, r.err, limit)
	}
	if !isReset(werr) && !isReset(rerr) {
		t.Errorf("client: write %v, read %v; want a reset", werr, rerr)
	}
	if got := tab.Rules()[0].Counters.Resets.Load(); got != 1 {
		t.Errorf("resets counted %d, want 1", got)
	}
}

func isReset(err error) bool {
	return err != nil && (errors.Is(err, syscall.ECONNRESET) || bytes.Contains([]byte(err.Error()), []byte("reset")))
}

// TestImpairDelayedChecksums: a delayed packet reaches the stack from the
// delay line while the reader may have told gVisor, for its own packet,
// to check checksums or to trust them. A delayed SYN with a partial
// checksum (the kernel's own) is still relayed when the reader's last
// packet was one to check; a delayed SYN with a bad checksum and no
// offload flag (a raw socket's) is still dropped when the reader's last
// packet was a trusted one.
func TestImpairDelayedChecksums(t *testing.T) {
	tab := impairTable(t, "tcp:80 delay=50ms")
	s, dev, out := newCaptureStack(t, Config{Impair: tab})
	lo := [4]byte{127, 0, 0, 1}
	// packets returns what the stack writes within d, TCP SYNs to port
	// 80 counted apart.
	packets := func(d time.Duration) (syns int) {
		deadline := time.After(d)
		for {
			select {
			case p := <-out:
				ip := header.IPv4(p)
				if ip.TransportProtocol() == header.TCPProtocolNumber {
					if tcp := header.TCP(p[ip.HeaderLength():]); tcp.Flags() == header.TCPFlagSyn && tcp.DestinationPort() == 80 {
						syns++
					}
				}
			case <-deadline:
				return syns
			}
		}
	}

	pkt, partial := partialSYN(lo, [4]byte{127, 0, 0, 2}, 4000, 80)
	dev.InjectWith(partial, pkt)
	// An echo request from a raw socket: the reader has gVisor check it,
	// and the stack answers it while the SYN waits.
	dev.Inject(echoRequest(lo, [4]byte{127, 0, 0, 9}, 1, 1, []byte("x")))
	if n := packets(500 * time.Millisecond); n != 1 {
		t.Errorf("delayed SYN with a partial checksum (NEEDS_CSUM): relayed %d times, want once", n)
	}

	dropped := s.Metrics().DroppedPackets.Load()
	bad, _ := partialSYN(lo, [4]byte{127, 0, 0, 3}, 4001, 80) // no flag: the partial sum is a bad checksum
	dev.Inject(bad)
	good, partial := partialSYN(lo, [4]byte{127, 0, 0, 4}, 4002, 81) // trusted, not delayed
	dev.InjectWith(partial, good)
	if n := packets(500 * time.Millisecond); n != 0 {
		t.Errorf("delayed SYN with a bad checksum: relayed %d times, want dropped", n)
	}
	if got := s.Metrics().DroppedPackets.Load() - dropped; got != 1 {
		t.Errorf("DroppedPackets grew by %d, want 1", got)
	}
}
