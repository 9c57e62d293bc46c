package tundev

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// kernelDevice is a kernel TUN device opened through wireguard-go. Reads go
// through wireguard-go, which splits GSO super-packets and completes partial
// checksums; writes bypass it with writev(2) on the same descriptor, so an
// outgoing packet made of several buffers (gVisor keeps headers and payload
// apart) reaches the kernel without being flattened first. wireguard-go's
// own Write needs one contiguous buffer per packet and also issues one
// write(2) per packet: the kernel's TUN has no batched write.
type kernelDevice struct {
	tun.Device
	name string
	mtu  int
	raw  syscall.RawConn
}

var _ Device = (*kernelDevice)(nil)

// Create creates the non-persistent TUN device name with the given MTU. The
// device is left down; the caller configures and raises it. It refuses a
// name that is already taken rather than attaching to it: TUNSETIFF would
// silently attach to an existing persistent TUN device of that name.
//
// With offload, the kernel may hand over TSO super-packets and packets with
// partial checksums (wireguard-go's Read splits and completes them);
// without, it segments and checksums every packet itself before uloopd
// reads it, as it would for a device with no offloads.
func Create(name string, mtu int, offload bool) (Device, error) {
	if _, err := net.InterfaceByName(name); err == nil {
		return nil, fmt.Errorf("creating %s: %w", name, ErrExists)
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	if err := setTxQueueLen(name, TxQueueLen); err != nil {
		dev.Close()
		return nil, err
	}
	raw, err := dev.File().SyscallConn()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("TUN device %s: %w", name, err)
	}
	if !offload {
		var ioctlErr error
		if err := raw.Control(func(fd uintptr) {
			ioctlErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, 0)
		}); err == nil {
			err = ioctlErr
		}
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("turning offloads off on %s: %w", name, err)
		}
	}
	d := &kernelDevice{Device: dev, name: name, mtu: mtu, raw: raw}
	// wireguard-go reports link up/down and MTU changes on a small buffered
	// channel; nobody here needs them, but an unread channel would block its
	// netlink listener goroutine forever.
	go func() {
		for range dev.Events() {
		}
	}()
	return d, nil
}

// Read implements Device.Read, through wireguard-go.
func (d *kernelDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	if errors.Is(err, tun.ErrTooManySegments) {
		err = ErrTooManySegments
	}
	return n, err
}

// MTU implements Device.MTU.
func (d *kernelDevice) MTU() int { return d.mtu }

// Name implements Device.Name.
func (d *kernelDevice) Name() string { return d.name }

// WritePacket implements Device.WritePacket.
func (d *kernelDevice) WritePacket(vnet VirtioNetHdr, pkt [][]byte) error {
	var hdr [VirtioNetHdrLen]byte
	vnet.Marshal(hdr[:])
	var iovs [8][]byte
	iov := append(append(iovs[:0], hdr[:]), pkt...)
	var werr error
	err := d.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), iov)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	if errors.Is(err, unix.EBADFD) {
		// The device was deleted under us (ip link del).
		return os.ErrClosed
	}
	return err
}

// setTxQueueLen sets how many packets the kernel queues for the device
// before dropping them. Equivalent to: ip link set NAME txqueuelen N.
func setTxQueueLen(name string, n int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("TUN device %s: %w", name, err)
	}
	if err := netlink.LinkSetTxQLen(link, n); err != nil {
		return fmt.Errorf("setting txqueuelen of %s: %w", name, err)
	}
	return nil
}
