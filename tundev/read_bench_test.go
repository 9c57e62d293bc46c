//go:build linux

package tundev

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/uloop/uloop/netns"
	"github.com/vishvananda/netlink"
)

// BenchmarkRead: one datagram sent by a kernel UDP socket through a real
// TUN device (in a namespace of its own, offloads on, the default MTU) and read
// back, per op, through this package's Read and, for comparison, through
// wireguard-go's on the same device. The kernel marks such datagrams
// NEEDS_CSUM: wireguard-go copies each one out of its own buffer and sums
// it; Read does neither. The send is the same in both, so the difference
// between the two is the read path's. Needs root; skipped otherwise.
//
//	go test -run '^$' -bench Read ./tundev/
func BenchmarkRead(b *testing.B) {
	dev, conn := testDevice(b)
	kd := dev.(*kernelDevice)
	bufs := make([][]byte, kd.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, SlotSize(i, DefaultMTU))
	}
	sizes, hdrs := make([]int, len(bufs)), make([]VirtioNetHdr, len(bufs))
	reads := map[string]func() (int, error){
		"uloop":        func() (int, error) { return dev.Read(bufs, sizes, hdrs, 0) },
		"wireguard-go": func() (int, error) { return kd.Device.Read(bufs, sizes, 0) },
	}
	for _, size := range []int{1, 1400, 65000} {
		payload := make([]byte, size)
		want := 28 + size // IPv4 and UDP headers
		for _, name := range []string{"wireguard-go", "uloop"} {
			read := reads[name]
			b.Run(fmt.Sprintf("%s/%d", name, size), func(b *testing.B) {
				b.SetBytes(int64(want))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := conn.Write(payload); err != nil {
						b.Fatal(err)
					}
					// Skip anything else the device sends (IPv6
					// neighbour discovery when it comes up).
					for {
						n, err := read()
						if err != nil {
							b.Fatal(err)
						}
						if n == 1 && sizes[0] == want {
							break
						}
					}
				}
			})
		}
	}
}

// testDevice creates a kernel TUN device (offloads on, default MTU) in a
// namespace of its own, which goes when the test ends, with 10.99.0.1/24
// on it, and a UDP socket in that namespace connected to 10.99.0.2:9, so
// that what it sends is routed into the device. Skips without root.
func testDevice(tb testing.TB) (Device, *net.UDPConn) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (a TUN device in a namespace of its own)")
	}
	ns, err := netns.Create("tundev-test")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Delete() })
	var dev Device
	var conn *net.UDPConn
	if err := ns.Do(func() error {
		d, err := Create("test0", DefaultMTU, true)
		if err != nil {
			return err
		}
		dev = d
		link, err := netlink.LinkByName("test0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("10.99.0.1/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: 9})
		return err
	}); err != nil {
		if dev != nil {
			dev.Close()
		}
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(); dev.Close() })
	return dev, conn
}
