package sockhook

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/uloop/uloop/netns"
	"github.com/vishvananda/netlink"
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
