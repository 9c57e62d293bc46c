//go:build linux

package loopback

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
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

// NoICMPRateLimit turns off the kernel's rate limit for the ICMP errors its
// namespace sends (net.ipv4.icmp_ratelimit, net.ipv6.icmp.ratelimit). On lo
// the kernel exempts loopback traffic from it; through ulo0 the port
// unreachable that makes a UDP send to a closed port fail with
// ECONNREFUSED was limited to a burst of 6 and then one a second per
// address. These settings belong to the namespace, not to a device, so
// only `uloop run`, whose namespace has no other interface, changes them;
// for uloopd it is a known difference (docs/semantics.md).
func NoICMPRateLimit() error {
	for _, f := range []string{"/proc/sys/net/ipv4/icmp_ratelimit", "/proc/sys/net/ipv6/icmp/ratelimit"} {
		err := os.WriteFile(f, []byte("0"), 0)
		if err != nil && !(errors.Is(err, fs.ErrNotExist) && strings.Contains(f, "ipv6")) {
			return fmt.Errorf("turning off the ICMP rate limit: %w", err)
		}
	}
	return nil
}
