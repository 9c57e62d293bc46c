package tundev

import (
	"fmt"
	"net"

	"golang.zx2c4.com/wireguard/tun"
)

// kernelDevice is a kernel TUN device opened through wireguard-go.
type kernelDevice struct {
	tun.Device
	name string
	mtu  int
}

var _ Device = (*kernelDevice)(nil)

// Create creates the non-persistent TUN device name with the given MTU. The
// device is left down; the caller configures and raises it. It refuses a
// name that is already taken rather than attaching to it: TUNSETIFF would
// silently attach to an existing persistent TUN device of that name.
func Create(name string, mtu int) (Device, error) {
	if _, err := net.InterfaceByName(name); err == nil {
		return nil, fmt.Errorf("creating %s: %w", name, ErrExists)
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	d := &kernelDevice{Device: dev, name: name, mtu: mtu}
	// wireguard-go reports link up/down and MTU changes on a small buffered
	// channel; nobody here needs them, but an unread channel would block its
	// netlink listener goroutine forever.
	go func() {
		for range dev.Events() {
		}
	}()
	return d, nil
}

// MTU implements Device.MTU.
func (d *kernelDevice) MTU() int { return d.mtu }

// Name implements Device.Name.
func (d *kernelDevice) Name() string { return d.name }
