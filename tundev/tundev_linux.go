package tundev

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// kernelDevice is a kernel TUN device created through wireguard-go, whose
// descriptor it reads and writes itself.
//
// Reads: wireguard-go's Read reads into a buffer of its own, copies each
// packet into the caller's, and completes every partial checksum in Go
// (which gVisor then verifies again). Here readv(2) puts the virtio-net
// header into a small buffer and the packet straight into the caller's
// buffer (the view gVisor will own); the header goes back to the caller, so
// a packet the kernel built itself is never checksummed in user space.
// Only a GSO super-packet larger than that buffer spills into a buffer of
// the device's, and is split anyway.
// (wireguard-go's Read also returned the errors of its netlink listener,
// which only reports link events; they are not read errors of the device,
// and they no longer stop the reader.)
//
// Writes: writev(2), so an outgoing packet made of several buffers (gVisor
// keeps headers and payload apart) reaches the kernel without being
// flattened first. wireguard-go's own Write needs one contiguous buffer per
// packet and also issues one write(2) per packet: the kernel's TUN has no
// batched write.
type kernelDevice struct {
	tun.Device
	name   string
	mtu    int
	raw    syscall.RawConn
	closed atomic.Bool

	// The reader's state: Read is not meant to be called concurrently,
	// but a mutex keeps two callers from sharing it.
	rmu sync.Mutex
	// +checklocks:rmu
	vnet [VirtioNetHdrLen]byte
	// spill takes what does not fit the first buffer: only a GSO
	// super-packet can be larger than the MTU. Set by Create; its
	// contents belong to the Read holding rmu.
	spill []byte
	// iov is readv's vector: vnet, the caller's first buffer, spill.
	// +checklocks:rmu
	iov [3]unix.Iovec
	// readv is d.readvOnce, bound once so that a Read allocates nothing
	// (a closure passed to RawConn.Read escapes).
	readv func(fd uintptr) bool
	// iovcnt is how many of iov the next readv uses.
	// +checklocks:rmu
	iovcnt int
	// n and errno are what the last readv returned.
	// +checklocks:rmu
	n int
	// +checklocks:rmu
	errno syscall.Errno
	// wait: the readv in progress is a Read's, which waits for a packet;
	// else a TryRead's, which does not.
	// +checklocks:rmu
	wait bool
	// waited: the last Read found the device empty and waited.
	waited atomic.Bool
	// uso: the device takes UDP GSO packets (TUN_F_USO4 and USO6 on).
	uso bool
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
	// Read relies on the virtio-net header that wireguard-go asks for: it
	// says which packets the kernel built itself and which are GSO
	// super-packets.
	var flags uint16
	var ioctlErr error
	if err := raw.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, ioctlErr = unix.NewIfreq(name); ioctlErr == nil {
			ioctlErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
			flags = ifr.Uint16()
		}
	}); err == nil {
		err = ioctlErr
	}
	if err == nil && flags&unix.IFF_VNET_HDR == 0 {
		err = errors.New("opened without IFF_VNET_HDR")
	}
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
	if offload {
		// wireguard-go turns on UDP segmentation offload where the
		// kernel has it (6.2 and later) and TCP's alone elsewhere;
		// setting the same flags again says which it did. A device
		// with it takes UDP GSO packets from us as well.
		_ = raw.Control(func(fd uintptr) {
			d.uso = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6|unix.TUN_F_USO4|unix.TUN_F_USO6) == nil
		})
	}
	if mtu < maxSuperPacket {
		d.spill = make([]byte, maxSuperPacket-mtu)
	}
	d.readv = d.readvOnce
	// wireguard-go reports link up/down and MTU changes on a small buffered
	// channel; nobody here needs them, but an unread channel would block its
	// netlink listener goroutine forever.
	go func() {
		for range dev.Events() {
		}
	}()
	return d, nil
}

// Read implements Device.Read: one readv(2) of one packet, straight into
// bufs[0], split if it is a GSO super-packet.
func (d *kernelDevice) Read(bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int) (int, error) {
	return d.read(bufs, sizes, hdrs, offset, true)
}

// TryRead implements Device.TryRead.
func (d *kernelDevice) TryRead(bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int) (int, error) {
	return d.read(bufs, sizes, hdrs, offset, false)
}

// UDPSegmentation implements Device.UDPSegmentation: TUN_F_USO4 and
// USO6 are on.
func (d *kernelDevice) UDPSegmentation() bool { return d.uso }

// ReadWaited implements Device.ReadWaited.
func (d *kernelDevice) ReadWaited() bool { return d.waited.Load() }

func (d *kernelDevice) read(bufs [][]byte, sizes []int, hdrs []VirtioNetHdr, offset int, wait bool) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	first := bufs[0][offset:]
	d.iov[0].Base, d.iov[0].Len = &d.vnet[0], VirtioNetHdrLen
	d.iov[1].Base, d.iov[1].Len = unsafe.SliceData(first), uint64(len(first))
	d.iovcnt = 2
	if len(d.spill) > 0 {
		d.iov[2].Base, d.iov[2].Len = &d.spill[0], uint64(len(d.spill))
		d.iovcnt = 3
	}
	d.n, d.errno, d.wait = 0, 0, wait
	if wait {
		d.waited.Store(false)
	}
	err := d.raw.Read(d.readv)
	// The buffers' memory is only borrowed for the system call.
	d.iov = [3]unix.Iovec{}
	if err == nil && d.errno == unix.EAGAIN {
		return 0, nil // TryRead, nothing queued
	}
	if err == nil && d.errno != 0 {
		err = d.errno
	}
	if err != nil {
		if d.closed.Load() || errors.Is(err, unix.EBADFD) {
			// Closed by us, or the device was deleted under us (ip
			// link del).
			return 0, fmt.Errorf("reading %s: %w", d.name, os.ErrClosed)
		}
		return 0, fmt.Errorf("reading %s: %w", d.name, err)
	}
	n := d.n - VirtioNetHdrLen
	if n < 0 {
		return 0, ErrDropped
	}
	var h VirtioNetHdr
	h.Unmarshal(d.vnet[:])
	if h.GSOType == VirtioNetHdrGSONone {
		if n > len(first) {
			return 0, ErrDropped // larger than the MTU, yet not GSO
		}
		sizes[0] = n
		hdrs[0] = VirtioNetHdr{Flags: h.Flags, CsumStart: h.CsumStart, CsumOffset: h.CsumOffset}
		return 1, nil
	}
	head, tail := first, d.spill[:0]
	if n <= len(first) {
		head = first[:n]
	} else {
		tail = d.spill[:n-len(first)]
	}
	return splitGSO(h, head, tail, bufs, sizes, hdrs, offset)
}

// readvOnce is the readv(2) that Read and TryRead hand to RawConn.Read:
// it reads into d.iov[:d.iovcnt] and leaves the byte count in d.n and the
// error in d.errno (EAGAIN: a TryRead found nothing). For a Read it
// returns false (wait for the poller, then retry) while there is nothing
// to read.
func (d *kernelDevice) readvOnce(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&d.iov[0])), uintptr(d.iovcnt))
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if d.wait {
				d.waited.Store(true)
				return false
			}
		}
		d.n, d.errno = int(n), errno
		return true
	}
}

// Close implements Device.Close. A Read blocked in the poller returns
// os.ErrClosed.
func (d *kernelDevice) Close() error {
	d.closed.Store(true)
	return d.Device.Close()
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
