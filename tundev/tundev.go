// Package tundev is the kernel TUN device that uloop's data path reads
// packets from and writes them back to.
//
// It wraps wireguard-go's tun package, opened with IFF_VNET_HDR and TCP
// offloads (TSO, checksum offload), so one Read can return a batch of packets
// split from a GSO super-packet and one Write can coalesce TCP segments (GRO).
package tundev

import "errors"

const (
	// DefaultName is the name uloopd gives its device.
	DefaultName = "ulo0"
	// DefaultMTU is the largest IPv4 packet: with it the kernel hands over
	// 64 KiB segments directly, which cuts per-packet costs about 40x
	// compared with 1500.
	DefaultMTU = 65535
	// WriteOffset is the headroom that every buffer passed to Write must have
	// in front of the packet: the virtio-net header is written there.
	WriteOffset = 10
)

// Device is a batched packet device. It is the subset of wireguard-go's
// tun.Device that the data path uses, so an in-memory device can stand in
// for the kernel one in tests that run without root.
type Device interface {
	// Read reads one or more packets into bufs, each starting at offset, and
	// sets their lengths in sizes. len(bufs) and len(sizes) must be at least
	// BatchSize(), and each buffer must hold offset+MTU() bytes. It returns
	// the number of packets read. After Close it returns an error wrapping
	// os.ErrClosed.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes the packets bufs[i][offset:]. offset must be at least
	// WriteOffset, and the bytes before offset may be overwritten. Write may
	// coalesce packets, so buffers may need spare capacity after the packet
	// (cap >= offset+MTU()). Safe for concurrent use.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the most packets one Read returns or one Write should
	// get. It does not change over the life of a Device.
	BatchSize() int
	// MTU is the largest packet the device carries.
	MTU() int
	// Name is the kernel interface name.
	Name() string
	// Close closes the device; the kernel deletes a non-persistent device
	// (and every route through it) when its last file descriptor closes.
	Close() error
}

// ErrExists is returned by Create when an interface of that name exists.
var ErrExists = errors.New("device already exists")
