//go:build linux

package loopback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/uloop/uloop/route"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// An EchoProbe checks that the data path answers with ICMP echo requests
// to an address the takeover routes through the TUN: the stack answers
// them itself, so a reply means packets are read from the TUN, handled by
// the stack and written back. Unlike the ready probe's TCP connection it
// makes no relayed flow and moves no TCP or UDP counter, so it can run
// every second without showing up in `uloop status` (tcpdump -i ulo0 sees
// one echo request and reply per probe). It needs CAP_NET_RAW (a raw
// socket) in the namespace, only to open.
type EchoProbe struct {
	conn *icmp.PacketConn
	dst  *net.IPAddr
	id   int
	seq  int
}

// NewEchoProbe opens the raw ICMP socket probing dst.
func NewEchoProbe(dst netip.Addr) (*EchoProbe, error) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("opening the watchdog's ICMP socket: %w", err)
	}
	return &EchoProbe{conn: conn, dst: &net.IPAddr{IP: dst.AsSlice()}, id: os.Getpid() & 0xffff}, nil
}

// Close closes the socket.
func (p *EchoProbe) Close() error { return p.conn.Close() }

// Probe sends one echo request and waits up to timeout for its reply. A
// raw socket sees every ICMP packet of the namespace (also the replies to
// the programs' own pings), so replies are matched by identifier, sequence
// and payload.
func (p *EchoProbe) Probe(timeout time.Duration) error {
	p.seq = (p.seq + 1) & 0xffff
	payload := []byte("uloop watchdog")
	req, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: p.seq, Data: payload}}).Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := p.conn.WriteTo(req, p.dst); err != nil {
		return fmt.Errorf("sending echo request: %w", err)
	}
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no echo reply from %v: %w", p.dst, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n]) // 1: ICMP for IPv4
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == p.id && e.Seq == p.seq && string(e.Data) == string(payload) {
			return nil
		}
	}
}

// Watchdog settings: how often the probe runs, and how long each waits.
const watchdogEvery = time.Second

// Watch probes the data path every second until ctx ends. Once no probe has
// been answered for after (and at least three in a row went unanswered), it
// hands c.Prefix back to the kernel's lo (route.HandBack) and returns nil:
// a daemon that is stopped (SIGSTOP) or wedged then no longer hangs every
// connect and ping to 127/8. Loopback stays on lo from then on; switching
// back when the data path answered again would cut the connections made
// over lo in between. It returns ctx's error if ctx ends first.
func Watch(ctx context.Context, p *EchoProbe, c route.Config, after time.Duration) error {
	lastOK := time.Now()
	failed := 0
	tick := time.NewTicker(watchdogEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if err := p.Probe(watchdogEvery); err == nil {
			lastOK, failed = time.Now(), 0
			continue
		}
		failed++
		if failed >= 3 && time.Since(lastOK) >= after {
			return route.HandBack(c)
		}
	}
}

// Probe runs the ready probe again (a TCP connection that must cross the
// stack and its relay) with timeout, for a supervisor asking whether the
// data path still answers (uloopd's systemd watchdog).
func (l *Loopback) Probe(timeout time.Duration) error {
	if l == nil {
		return errors.New("no data path")
	}
	return probe(l.Route.Source(), l.Stack.Metrics(), timeout)
}
