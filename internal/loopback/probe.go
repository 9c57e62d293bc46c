//go:build linux

package loopback

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/uloop/uloop/stack"
)

// probe proves the data path answers: it connects a kernel socket to a
// kernel listener on addr (route.Config.Source: the address the takeover's
// route gives unbound sockets, so the connection runs from addr to addr
// through the TUN) and checks that the stack relayed the connection, so
// "ready" means packets cross the TUN, the stack and the relay, not merely
// that setup calls returned.
func probe(addr netip.Addr, m *stack.Metrics, timeout time.Duration) error {
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return fmt.Errorf("probe listener: %w", err)
	}
	defer ln.Close()
	return probeThrough(ln, ln.Addr().String(), m, timeout, nil)
}

// probeThrough connects a kernel socket to dial, which reaches ln, and
// checks that the stack relayed the connection and that a byte crossed it.
// checkPeer, if not nil, judges the client's address as the server sees it.
func probeThrough(ln net.Listener, dial string, m *stack.Metrics, timeout time.Duration, checkPeer func(net.Addr) error) error {
	before := m.TCPConnections.Load()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			if checkPeer != nil {
				err = checkPeer(c.RemoteAddr())
			}
			c.Write([]byte{1})
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout(ln.Addr().Network(), dial, timeout)
	if err != nil {
		return fmt.Errorf("probe connect: %w", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return fmt.Errorf("probe read: %w", err)
	}
	if err := <-accepted; err != nil {
		return fmt.Errorf("probe accept: %w", err)
	}
	if m.TCPConnections.Load() == before {
		return fmt.Errorf("probe connection to %s did not go through the stack (check the routing rules)", dial)
	}
	return nil
}
