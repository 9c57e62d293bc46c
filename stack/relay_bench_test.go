package stack

import (
	"io"
	"net"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// relayedConn returns a client connection of the fake kernel to an echo
// server of the fake kernel, relayed by a uloop stack on an in-memory device:
// every byte takes the whole path (fake kernel -> device -> stack -> relay ->
// stack -> device -> fake kernel) except the real kernel's work.
func relayedConn(b *testing.B) (net.Conn, *Stack) {
	k := newFakeKernel(b, 65535)
	s := newTestStack(b, k, Config{})
	addr := addr4(127, 0, 0, 1, 7000)
	echoServer(b, k.gv, addr, ipv4.ProtocolNumber)
	c, err := gonet.DialTCP(k.gv, addr, ipv4.ProtocolNumber)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, s
}

// BenchmarkRelayRoundTrip: one 1-byte request and its 1-byte response
// through the relay per op; tun-writes/op counts the device writes.
func BenchmarkRelayRoundTrip(b *testing.B) {
	c, s := relayedConn(b)
	buf := []byte{1}
	b.ReportAllocs()
	b.ResetTimer()
	w0 := s.Metrics().TUNTxPackets.Load()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(s.Metrics().TUNTxPackets.Load()-w0)/float64(b.N), "tun-writes/op")
}

// BenchmarkRelayThroughput: 64 KiB per op through the relay to the echo
// server and back.
func BenchmarkRelayThroughput(b *testing.B) {
	c, _ := relayedConn(b)
	out, in := make([]byte, 64<<10), make([]byte, 64<<10)
	b.SetBytes(int64(len(out)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}()
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(c, in); err != nil {
			b.Fatal(err)
		}
	}
}

// echoServer serves one TCP connection on addr of gv, echoing what it reads;
// it stops listening when the test ends.
func echoServer(tb testing.TB, gv *gstack.Stack, addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) {
	tb.Helper()
	ln, err := gonet.ListenTCP(gv, addr, proto)
	if err != nil {
		tb.Fatalf("listen %v: %v", addr, err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
}
