package stack

import (
	"context"
	"testing"

	"github.com/uloop/uloop/tundev"
	"github.com/uloop/uloop/tundev/tundevtest"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// fakeKernel stands in for the Linux kernel in tests without root: a second
// gVisor stack that owns 127.0.0.1/8 and, like the kernel under uloopd's
// rules, sends every packet to 127/8 out through the TUN device (here an
// in-memory one) and accepts what comes back from it.
type fakeKernel struct {
	gv  *gstack.Stack
	ep  *channel.Endpoint
	dev *tundevtest.Device
}

func newFakeKernel(t testing.TB, mtu int) *fakeKernel {
	t.Helper()
	k := &fakeKernel{
		gv: gstack.New(gstack.Options{
			NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true})},
			TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
			// Like the kernel's "iif lo" rule: even packets to its own
			// addresses leave through the device.
			HandleLocal: false,
		}),
		ep: channel.New(1024, uint32(mtu), ""),
	}
	if err := k.gv.CreateNIC(1, k.ep); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	if err := k.gv.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), PrefixLen: 8},
	}, gstack.AddressProperties{}); err != nil {
		t.Fatalf("AddProtocolAddress: %v", err)
	}
	// Linux treats all of 127/8 as local; promiscuous mode and spoofing
	// are how gVisor accepts (and answers from) addresses it was not given.
	if err := k.gv.SetPromiscuousMode(1, true); err != nil {
		t.Fatalf("SetPromiscuousMode: %v", err)
	}
	if err := k.gv.SetSpoofing(1, true); err != nil {
		t.Fatalf("SetSpoofing: %v", err)
	}
	sub, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{127, 0, 0, 0}), tcpip.MaskFromBytes([]byte{255, 0, 0, 0}))
	k.gv.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: 1}})
	// What uloop writes to its device arrives at the kernel's NIC.
	k.dev = tundevtest.New(mtu, 16, func(pkt []byte) {
		pb := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
		k.ep.InjectInbound(header.IPv4ProtocolNumber, pb)
		pb.DecRef()
	})
	// What the kernel sends out of its NIC is read by uloop from its device.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			pb := k.ep.ReadContext(ctx)
			if pb == nil {
				return
			}
			// Marked DATA_VALID: the fake kernel computes full
			// checksums (the real one leaves TCP and UDP ones partial),
			// and like the real one it is trusted not to corrupt what
			// it built. Raw packets a test injects itself still get
			// verified.
			v := pb.ToView()
			k.dev.InjectWith(tundev.VirtioNetHdr{Flags: tundev.VirtioNetHdrFDataValid}, v.AsSlice())
			v.Release()
			pb.DecRef()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		k.gv.Close()
		k.gv.Wait()
		k.ep.Close()
	})
	return k
}

// newTestStack starts a uloop stack on the fake kernel's device.
func newTestStack(t testing.TB, k *fakeKernel, cfg Config) *Stack {
	t.Helper()
	cfg.Device = k.dev
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}
