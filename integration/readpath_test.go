//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestReadPath: what uloopd reads from its TUN device. Traffic of kernel
// sockets arrives with checksums the kernel vouched for (partial ones: the
// device has checksum offload), which uloopd must neither need to compute
// nor reject, also when a GSO super-packet has to be split (MTU 1500, TSO);
// bytes arrive intact and every packet of that traffic is counted in
// uloop_tun_rx_checksum_trusted_total. A packet from a raw socket carries
// no such word: a good one is still delivered, checked, and not counted as
// trusted; a corrupt one is dropped (TestCraftedPackets has the rest).
func TestReadPath(t *testing.T) {
	uloopOnly(t, func(t *testing.T) {
		for _, mtu := range []int{65535, 1500} {
			t.Run("mtu-"+strconv.Itoa(mtu), func(t *testing.T) {
				e := uloopEnv(t, "--mtu", strconv.Itoa(mtu))
				c, s := connPair(t, e.ns, "127.0.0.1:0", "127.0.0.1")
				u := e.ns.listenUDP(t, "127.0.0.1:0")
				before := metrics(t, e.ns)

				// 4 MiB each way in 256 KiB writes (TSO super-packets
				// at MTU 1500), then small messages.
				big := make([]byte, 256<<10)
				for i := 0; i < 16; i++ {
					for j := range big {
						big[j] = byte(rand.Uint32())
					}
					exchange(t, c, s, big)
					exchange(t, s, c, big)
				}
				for i := 0; i < 50; i++ {
					exchange(t, c, s, []byte(fmt.Sprintf("request %d", i)))
					exchange(t, s, c, []byte(fmt.Sprintf("response %d", i)))
				}
				// UDP from a kernel socket.
				uc := dialUDP(t, e.ns, "udp4", u.LocalAddr().(*net.UDPAddr))
				for i := 0; i < 20; i++ {
					msg := bytes.Repeat([]byte{byte(i)}, 1000+i)
					if _, err := uc.Write(msg); err != nil {
						t.Fatal(err)
					}
					u.SetReadDeadline(time.Now().Add(5 * time.Second))
					got := make([]byte, 2000)
					n, err := u.Read(got)
					if err != nil || !bytes.Equal(got[:n], msg) {
						t.Fatalf("datagram %d: %d bytes, %v; want the %d sent", i, n, err, len(msg))
					}
				}

				after := metrics(t, e.ns)
				rx := metricValue(t, after, "uloop_tun_rx_packets_total") - metricValue(t, before, "uloop_tun_rx_packets_total")
				trusted := metricValue(t, after, "uloop_tun_rx_checksum_trusted_total") - metricValue(t, before, "uloop_tun_rx_checksum_trusted_total")
				dropped := metricValue(t, after, "uloop_dropped_packets_total") - metricValue(t, before, "uloop_dropped_packets_total")
				t.Logf("packets read %v, trusted %v, dropped %v", rx, trusted, dropped)
				if rx < 100 || trusted != rx {
					t.Errorf("read %v packets of kernel sockets' traffic, %v with checksums the kernel vouched for; want all", rx, trusted)
				}
				if dropped != 0 {
					t.Errorf("%v packets dropped", dropped)
				}

				// A raw socket's datagram: verified, then delivered.
				raw := newRawSender(t, e.ns)
				lo := netip.MustParseAddr("127.0.0.1")
				dst := netip.MustParseAddrPort(u.LocalAddr().String())
				src := netip.AddrPortFrom(lo, 40999)
				before = metrics(t, e.ns)
				seg := udpSegment(src, dst, []byte("raw but sound"))
				transportChecksum(header.UDPProtocolNumber, lo, lo, seg)
				raw.send(t, ipPacket(ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber}, seg))
				u.SetReadDeadline(time.Now().Add(5 * time.Second))
				got := make([]byte, 100)
				n, err := u.Read(got)
				if err != nil || string(got[:n]) != "raw but sound" {
					t.Fatalf("raw datagram with a valid checksum: read %q, %v", got[:n], err)
				}
				bad := udpSegment(src, dst, []byte("raw and corrupt"))
				raw.send(t, corruptTransportChecksum(ipPacket(ipHeader{src: lo, dst: lo, proto: header.UDPProtocolNumber}, bad)))
				u.SetReadDeadline(time.Now().Add(quietFor))
				if n, err := u.Read(got); err == nil {
					t.Errorf("raw datagram with a bad checksum delivered: %q", got[:n])
				}
				after = metrics(t, e.ns)
				// Only the two raw packets may go uncounted: the kernel
				// sockets' late ACKs in the same window are trusted.
				rx = metricValue(t, after, "uloop_tun_rx_packets_total") - metricValue(t, before, "uloop_tun_rx_packets_total")
				trusted = metricValue(t, after, "uloop_tun_rx_checksum_trusted_total") - metricValue(t, before, "uloop_tun_rx_checksum_trusted_total")
				if rx-trusted != 2 {
					t.Errorf("read %v packets, %v of them trusted; want exactly the 2 raw ones not trusted", rx, trusted)
				}
				if d := metricValue(t, after, "uloop_stack_dropped_packets_total", "reason", "udp_checksum") - metricValue(t, before, "uloop_stack_dropped_packets_total", "reason", "udp_checksum"); d != 1 {
					t.Errorf("udp_checksum drops grew by %v, want 1", d)
				}
			})
		}
	})
}
