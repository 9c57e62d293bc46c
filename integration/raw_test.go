//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// protoExperimental is IP protocol 253, reserved for experimentation (RFC
// 3692): no kernel handler, so only raw sockets see it.
const protoExperimental = 253

// TestRawProtocol: packets of a protocol uloopd does not terminate reach raw
// sockets as on lo (the daemon hands them back to the kernel unchanged).
func TestRawProtocol(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		for _, dst := range []string{"127.0.0.1", "127.9.8.7"} {
			t.Run(dst, func(t *testing.T) {
				before := e.snapshot(t)
				rx, tx := -1, -1
				err := e.ns.do(func() (err error) {
					if rx, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, protoExperimental); err != nil {
						return err
					}
					tx, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, protoExperimental)
					return err
				})
				if rx >= 0 {
					defer syscall.Close(rx)
				}
				if tx >= 0 {
					defer syscall.Close(tx)
				}
				if err != nil {
					t.Fatalf("raw socket, protocol %d: %v", protoExperimental, err)
				}
				tv := syscall.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
				if err := syscall.SetsockoptTimeval(rx, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
					t.Fatal(err)
				}

				payload := []byte(fmt.Sprintf("uloop raw %d to %s", time.Now().UnixNano(), dst))
				to := &syscall.SockaddrInet4{}
				copy(to.Addr[:], net.ParseIP(dst).To4())
				if err := syscall.Sendto(tx, payload, 0, to); err != nil {
					t.Fatalf("sendto %s: %v", dst, err)
				}

				// An IPv4 raw socket reads the IP header too. Other protocol-253
				// packets (none expected) are skipped.
				buf := make([]byte, 2048)
				deadline := time.Now().Add(5 * time.Second)
				for {
					n, _, err := syscall.Recvfrom(rx, buf, 0)
					if err == syscall.EAGAIN || err == syscall.EINTR {
						if time.Now().After(deadline) {
							t.Fatalf("raw socket: no protocol %d packet to %s within 5s, want the one sent", protoExperimental, dst)
						}
						continue
					}
					if err != nil {
						t.Fatalf("recvfrom: %v", err)
					}
					if n < 20 {
						continue
					}
					hl := int(buf[0]&0x0f) * 4
					if n < hl || !bytes.Equal(buf[hl:n], payload) {
						continue
					}
					if proto := buf[9]; proto != protoExperimental {
						t.Errorf("IP protocol: got %d, want %d", proto, protoExperimental)
					}
					if src, gotDst := net.IP(buf[12:16]).String(), net.IP(buf[16:20]).String(); src != "127.0.0.1" || gotDst != dst {
						t.Errorf("addresses: got %s -> %s, want 127.0.0.1 -> %s", src, gotDst, dst)
					}
					break
				}
				e.requireGrew(t, before, "uloop_passthrough_packets_total", 1)
				e.requireCrossed(t, before)
			})
		}
	})
}
