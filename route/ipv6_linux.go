package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addAddr6 gives the device addr/64 without duplicate address detection
// (there is no one else on the link), which also adds the connected route
// of the /64 through the device. Its undo deletes the address; one that
// went with its device counts as deleted.
// Equivalent to: ip addr add fd75:6c6f:6f70::1/64 dev ulo0 nodad
func addAddr6(dev string, addr netip.Addr) (undo func() error, err error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("adding %v to %s: %w", addr, dev, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrAdd(l, a); err != nil {
		return nil, fmt.Errorf("adding %v to %s: %w", addr, dev, err)
	}
	return func() error {
		l, err := netlink.LinkByName(dev)
		if isNotFound(err) {
			return nil
		}
		if err == nil {
			err = netlink.AddrDel(l, a)
		}
		if err != nil && err != unix.EADDRNOTAVAIL {
			return fmt.Errorf("deleting %v from %s: %w", addr, dev, err)
		}
		return nil
	}, nil
}

// HandBack6 is HandBack for ::1, once the socket hooks have stopped
// steering: it makes the stack's address IPv6Stack local (on lo), so that
// sockets steered to it before, whose connect or datagrams are still on
// their way, reach a server on [::] through lo instead of a stopped data
// path; the hooks show both ends as ::1 as before. It is not undone: `uloop
// run`'s watchdog calls it, and the namespace ends with the run.
// Equivalent to: ip addr add fd75:6c6f:6f70::2/128 dev lo nodad
func HandBack6(c Config) error {
	if !c.IPv6.IsValid() {
		return nil
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: c.IPv6Stack().AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
		if err = netlink.AddrAdd(lo, a); errors.Is(err, unix.EEXIST) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("handing ::1 back to lo: %w", err)
	}
	return nil
}
