package sockhook

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/uloop/uloop/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

var testConfig = Config{Prefix: netip.MustParsePrefix("fd75:6c6f:6f70::/64"), Target: netip.MustParseAddr("fd75:6c6f:6f70::2"), Kernel: netip.MustParseAddr("fd75:6c6f:6f70::1"), Device: "lo"}

// newNS returns a fresh namespace with lo up, deleted at the end.
func newNS(t *testing.T) *netns.Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and loads eBPF programs")
	}
	ns, err := netns.Create("sockhook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// dialUDP6 connects a UDP socket to [::1]:9 in ns: with the hooks attached
// the connect goes to the target, which nothing routes here, so it fails
// with ENETUNREACH; on lo it succeeds.
func dialUDP6(ns *netns.Namespace) error {
	return ns.Do(func() error {
		c, err := net.Dial("udp6", "[::1]:9")
		if err == nil {
			c.Close()
		}
		return err
	})
}

// TestSteersOnlyItsNamespace: the hooks rewrite ::1 for sockets of the
// namespace they were attached for, not for those of another, and Close
// gives ::1 back.
func TestSteersOnlyItsNamespace(t *testing.T) {
	served, sibling := newNS(t), newNS(t)
	var h *Hooks
	if err := served.Do(func() (err error) { h, err = Attach(testConfig); return err }); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer h.Close()
	if err := dialUDP6(served); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("served namespace: connect to [::1]:9 = %v, want ENETUNREACH (steered to %v, which has no route)", err, testConfig.Target)
	}
	if err := dialUDP6(sibling); err != nil {
		t.Errorf("sibling namespace: connect to [::1]:9 = %v, want it untouched", err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := dialUDP6(served); err != nil {
		t.Errorf("after Close: connect to [::1]:9 = %v, want lo again", err)
	}
}

// TestICMPNotHooked shows why ping -6 ::1 stays on lo: the kernel runs no
// cgroup sock_addr hook for ICMPv6 sockets (raw, or datagram "ping"
// sockets), so an echo request to ::1 is not steered, while a UDP datagram
// from the same namespace is.
func TestICMPNotHooked(t *testing.T) {
	ns := newNS(t)
	var h *Hooks
	if err := ns.Do(func() (err error) { h, err = Attach(testConfig); return err }); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer h.Close()
	if err := dialUDP6(ns); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("UDP connect to [::1]:9 = %v, want ENETUNREACH (steered)", err)
	}
	for _, network := range []string{"ip6:ipv6-icmp", "udp6"} {
		t.Run(network, func(t *testing.T) {
			err := ns.Do(func() error {
				if network == "udp6" {
					// Ping sockets are open to the groups in this range.
					if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 0"), 0); err != nil {
						return err
					}
				}
				c, err := icmp.ListenPacket(network, "::")
				if err != nil {
					return err
				}
				defer c.Close()
				req, _ := (&icmp.Message{Type: ipv6.ICMPTypeEchoRequest, Body: &icmp.Echo{ID: 7, Seq: 1, Data: []byte("hook?")}}).Marshal(nil)
				var dst net.Addr = &net.IPAddr{IP: net.IPv6loopback}
				if network == "udp6" {
					dst = &net.UDPAddr{IP: net.IPv6loopback}
				}
				if _, err := c.WriteTo(req, dst); err != nil {
					return fmt.Errorf("sendto ::1: %w (a hook would have steered it to %v, which has no route)", err, testConfig.Target)
				}
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 1500)
				for {
					n, from, err := c.ReadFrom(buf)
					if err != nil {
						return fmt.Errorf("no echo reply from ::1: %w", err)
					}
					m, err := icmp.ParseMessage(58, buf[:n])
					if err == nil && m.Type == ipv6.ICMPTypeEchoReply {
						ip := net.IP(nil)
						switch a := from.(type) {
						case *net.IPAddr:
							ip = a.IP
						case *net.UDPAddr:
							ip = a.IP
						}
						if !ip.Equal(net.IPv6loopback) {
							return fmt.Errorf("echo reply from %v, want ::1", from)
						}
						return nil
					}
				}
			})
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
		})
	}
}

// TestNotSteered: sockets the hooks must leave on lo are not steered: one
// carrying uloop's SO_MARK (no loops through uloop's own sockets), one bound
// to ::1 (its packets could not leave lo), and one sending to a port that a
// UDP socket bound to exactly [::1] holds (the stack could not reach it).
func TestNotSteered(t *testing.T) {
	ns := newNS(t)
	var h *Hooks
	if err := ns.Do(func() (err error) { h, err = Attach(testConfig); return err }); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer h.Close()
	err := ns.Do(func() error {
		marked := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, DefaultMark)
			})
			return serr
		}}
		c, err := marked.Dial("udp6", "[::1]:9")
		if err != nil {
			return fmt.Errorf("marked socket: %w, want it on lo", err)
		}
		c.Close()
		bound := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv6loopback}}
		if c, err = bound.Dial("udp6", "[::1]:9"); err != nil {
			return fmt.Errorf("socket bound to ::1: %w, want it on lo", err)
		}
		c.Close()
		srv, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
		if err != nil {
			return err
		}
		defer srv.Close()
		if c, err = net.Dial("udp6", srv.LocalAddr().String()); err != nil {
			return fmt.Errorf("to a port bound to [::1]: %w, want it on lo", err)
		}
		c.Close()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The control: an unmarked, unbound socket to a free port is steered.
	if err := dialUDP6(ns); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("plain socket: connect to [::1]:9 = %v, want ENETUNREACH (steered)", err)
	}
}

// TestHandBack: through the switch's descriptor another party stops the
// steering, while the hooks stay attached.
func TestHandBack(t *testing.T) {
	ns := newNS(t)
	var h *Hooks
	if err := ns.Do(func() (err error) { h, err = Attach(testConfig); return err }); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer h.Close()
	f, err := h.Switch()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := dialUDP6(ns); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("before: connect to [::1]:9 = %v, want ENETUNREACH (steered)", err)
	}
	if err := HandBack(f); err != nil {
		t.Fatalf("HandBack: %v", err)
	}
	if err := dialUDP6(ns); err != nil {
		t.Errorf("after HandBack: connect to [::1]:9 = %v, want lo", err)
	}
}
