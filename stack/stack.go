// Package stack is uloop's userspace network stack: a gVisor TCP/IP stack
// joined to a TUN device, which terminates every TCP connection and UDP flow
// that a local program opens to 127.0.0.0/8, relays it to the local program
// listening there by opening the mirrored connection back through the same
// device, and answers ICMP echo itself.
package stack

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/uloop/uloop/impair"
	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	// tunNIC is the stack's NIC for the TUN device.
	tunNIC tcpip.NICID = 1
	// loopbackNIC is the stack's own loopback NIC, which holds ::1 for
	// endpoints that live inside the stack.
	loopbackNIC tcpip.NICID = 2
)

// What a relayed flow can hold in memory, whatever its peers do. These are
// the one source of the figures in docs/architecture.md ("Memory bound per
// connection") and of the bound the integration test of backpressure checks.
const (
	// tcpBufferMax is the largest receive or send buffer of a TCP endpoint
	// in the stack; auto-tuning grows them from 1 MiB up to it.
	tcpBufferMax = 4 << 20
	// relayBufferSize is the copy buffer of one direction of a relayed flow:
	// large enough for the biggest datagram, and for TCP a few segments per
	// copy (64 KiB cost more CPU per byte: docs/performance.md).
	relayBufferSize = 256 << 10
	// TCPBytesPerDirection is the most one direction of a relayed TCP
	// connection holds in the stack: the receive buffer of the endpoint
	// that receives, the relay's copy buffer, and the send buffer of the
	// endpoint that sends. A connection holds at most twice this.
	TCPBytesPerDirection = tcpBufferMax + relayBufferSize + tcpBufferMax

	tcpBufferDefault = 1 << 20
)

// Config configures a Stack.
type Config struct {
	// Device carries the packets; the stack owns it and closes it on Close.
	Device tundev.Device
	// Metrics receives the counters; nil makes a new one.
	Metrics *Metrics
	// Logger gets per-flow debug lines and unexpected errors; nil discards.
	Logger *slog.Logger
	// UDPIdleTimeout closes a UDP flow after no datagram in either
	// direction for this long. Zero means DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// DisableGSO makes the stack send every TCP segment at the MTU with a
	// full checksum, instead of handing GSO super-packets with partial
	// checksums to the kernel. For devices created without offloads.
	DisableGSO bool
	// MaxFlows bounds the TCP connections and UDP flows relayed at once
	// (each holds endpoints, goroutines and buffers). Past it a new TCP
	// connect gets a RST and a new UDP flow an ICMP port unreachable, at
	// once, counted in Metrics.FlowsRejected; existing flows are untouched.
	// Zero means DefaultMaxFlows.
	MaxFlows int
	// IPv6 is the prefix whose IPv6 traffic the device carries (the /64 the
	// socket hooks steer ::1 into); the zero Prefix means none, and IPv6
	// packets read from the device are dropped.
	IPv6 netip.Prefix
	// Impair holds the impairment rules, which may change while the stack
	// runs; nil: New makes an empty table (see Stack.Impair).
	Impair *impair.Table

	// dialTimeout bounds how long a relayed TCP connect waits for the
	// kernel's listener to answer before the client gets a RST. Zero means
	// defaultDialTimeout; tests shorten it.
	dialTimeout time.Duration
}

// Defaults for Config.
const (
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxFlows       = 16384
)

const (
	defaultDialTimeout = 20 * time.Second
	// maxInFlight is how many TCP connects may be dialing at once; SYNs
	// past it are dropped (the client retransmits). Too low a limit stalls
	// every connect during a burst of them.
	maxInFlight = 1024
)

// Stack is a running gVisor stack on a TUN device.
type Stack struct {
	gv      *stack.Stack
	link    *linkEndpoint
	metrics *Metrics
	relay   *relay
}

// New builds the stack on cfg.Device and starts reading from it.
func New(cfg Config) (*Stack, error) {
	if cfg.Metrics == nil {
		cfg.Metrics = new(Metrics)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UDPIdleTimeout == 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.dialTimeout == 0 {
		cfg.dialTimeout = defaultDialTimeout
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.Impair == nil {
		cfg.Impair = new(impair.Table)
	}

	gv := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			// gVisor drops 127/8 and ::1 on a NIC that is not loopback
			// unless told otherwise; here that is all the traffic there is.
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: true}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{
			tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
		},
		// The stack dials the kernel from and to addresses it also accepts
		// on (the mirrored tuple). HandleLocal would loop those packets
		// inside the stack instead of sending them out through the TUN,
		// and would drop inbound packets whose source is a stack address.
		HandleLocal: false,
	})
	s := &Stack{gv: gv, metrics: cfg.Metrics}
	fail := func(what string, err tcpip.Error) (*Stack, error) {
		gv.Close()
		gv.Wait()
		return nil, fmt.Errorf("%s: %v", what, err)
	}

	if err := setTCPOptions(gv); err != nil {
		return fail("setting TCP options", err)
	}

	s.link = newLinkEndpoint(cfg.Device, cfg.Metrics)
	s.link.gso = !cfg.DisableGSO
	if s.link.gso && cfg.Device.UDPSegmentation() {
		s.link.udp = newUDPGSO(s.link.write, cfg.Metrics)
	}
	s.link.impair = cfg.Impair
	if err := gv.CreateNICWithOptions(tunNIC, s.link, stack.NICOptions{Name: cfg.Device.Name()}); err != nil {
		return fail("creating TUN NIC", err)
	}
	// Promiscuous: accept packets to any 127/8 address without assigning
	// 16 million addresses. Spoofing: send (and bind) from any address, so
	// the relay can dial the kernel from the client's own address and port.
	if err := gv.SetPromiscuousMode(tunNIC, true); err != nil {
		return fail("enabling promiscuous mode", err)
	}
	if err := gv.SetSpoofing(tunNIC, true); err != nil {
		return fail("enabling spoofing", err)
	}

	if err := gv.CreateNICWithOptions(loopbackNIC, loopback.New(), stack.NICOptions{Name: "lo"}); err != nil {
		return fail("creating loopback NIC", err)
	}
	if err := gv.AddProtocolAddress(loopbackNIC, tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: header.IPv6Loopback, PrefixLen: 128},
	}, stack.AddressProperties{}); err != nil {
		return fail("adding ::1", err)
	}

	v4, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{127, 0, 0, 0}), tcpip.MaskFromBytes([]byte{255, 0, 0, 0}))
	v6, _ := tcpip.NewSubnet(header.IPv6Loopback, tcpip.MaskFromBytes(bytes.Repeat([]byte{0xff}, 16)))
	routes := []tcpip.Route{
		{Destination: v4, NIC: tunNIC},
		{Destination: v6, NIC: loopbackNIC},
	}
	if p := cfg.IPv6; p.IsValid() {
		// As tunNIC for 127/8: promiscuous and spoofing, so the stack
		// accepts on and dials from any address of the prefix.
		if err := gv.CreateNICWithOptions(tun6NIC, link6{s.link}, stack.NICOptions{Name: cfg.Device.Name() + "-v6"}); err != nil {
			return fail("creating IPv6 TUN NIC", err)
		}
		if err := gv.SetPromiscuousMode(tun6NIC, true); err != nil {
			return fail("enabling promiscuous mode on IPv6", err)
		}
		if err := gv.SetSpoofing(tun6NIC, true); err != nil {
			return fail("enabling spoofing on IPv6", err)
		}
		p = p.Masked()
		sub, err := tcpip.NewSubnet(tcpip.AddrFromSlice(p.Addr().AsSlice()), tcpip.MaskFromBytes(net.CIDRMask(p.Bits(), 128)))
		if err != nil {
			gv.Close()
			gv.Wait()
			return nil, fmt.Errorf("IPv6 prefix %v: %v", p, err)
		}
		routes = append(routes, tcpip.Route{Destination: sub, NIC: tun6NIC})
	}
	gv.SetRouteTable(routes)

	s.relay = newRelay(gv, cfg)
	s.relay.udpGSO = s.link.udp
	gv.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(gv, 0, maxInFlight, s.relay.handleTCP).HandlePacket)
	gv.SetTransportProtocolHandler(udp.ProtocolNumber, s.relay.handleUDPPacket)
	gv.SetTransportProtocolHandler(icmp.ProtocolNumber4, (&echoResponder{gv: gv, metrics: cfg.Metrics}).handle)
	return s, nil
}

// setTCPOptions turns on what fast peers use (SACK, receive-buffer
// auto-tuning) and sets the buffer bounds that the per-connection memory
// bound rests on.
func setTCPOptions(gv *stack.Stack) tcpip.Error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: tcpBufferDefault, Max: tcpBufferMax}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: tcpBufferDefault, Max: tcpBufferMax}
	// TIME-WAIT guards against a late duplicate of an old segment. Between
	// the stack and the kernel there is no network to delay one, and the
	// kernel's sockets keep their own TIME-WAIT; gVisor's default of 60 s
	// would only keep a closed connection's endpoint (and its tuple) around.
	timeWait := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rcv, &snd, &timeWait} {
		if err := gv.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return err
		}
	}
	return nil
}

// Metrics returns the stack's counters.
func (s *Stack) Metrics() *Metrics { return s.metrics }

// Impair returns the impairment rules the stack applies; changes to them
// act on running flows at their next packet.
func (s *Stack) Impair() *impair.Table { return s.link.impair }

// Flow is a relayed TCP connection or UDP flow.
type Flow struct {
	Proto          string // "tcp" or "udp"
	Client, Server netip.AddrPort
	Start          time.Time // when the relay took it on
	// Bytes relayed each way (payload, without headers).
	ClientToServer, ServerToClient uint64
	// State is the TCP state of the stack's endpoint that faces the
	// client ("ESTABLISHED", "CLOSE-WAIT", ...); "" for UDP.
	State string
}

// Flows lists the flows being relayed, in no particular order. If the
// device dies, the stack can no longer reset the TCP ones: their kernel
// sockets must then be destroyed by other means, or the programs wait for
// TCP's timeouts.
func (s *Stack) Flows() []Flow { return s.relay.list() }

// Drops returns gVisor's counts of the packets it dropped, by reason: the
// malformed and misaddressed input that the link endpoint hands over
// without judging it (the IP, TCP, UDP and ICMP layers check every field).
func (s *Stack) Drops() map[string]uint64 {
	st := s.gv.Stats()
	return map[string]uint64{
		"ip_malformed":        st.IP.MalformedPacketsReceived.Value() + st.IP.MalformedFragmentsReceived.Value(),
		"ip_invalid_address":  st.IP.InvalidDestinationAddressesReceived.Value() + st.IP.InvalidSourceAddressesReceived.Value(),
		"ip_option":           st.IP.OptionUnknownReceived.Value(),
		"l4_malformed":        st.NICs.MalformedL4RcvdPackets.Value(),
		"tcp_checksum":        st.TCP.ChecksumErrors.Value(),
		"tcp_invalid_segment": st.TCP.InvalidSegmentsReceived.Value(),
		"tcp_syn_backlog":     st.TCP.ForwardMaxInFlightDrop.Value(),
		"udp_checksum":        st.UDP.ChecksumErrors.Value(),
		"udp_malformed":       st.UDP.MalformedPacketsReceived.Value(),
		"udp_receive_buffer":  st.UDP.ReceiveBufferErrors.Value(),
		"icmp_invalid":        st.ICMP.V4.PacketsReceived.Invalid.Value(),
	}
}

// Done is closed when the stack stops reading from its device: after Close,
// or because the device failed; Err then says why.
func (s *Stack) Done() <-chan struct{} { return s.link.Done() }

// Err is the device error that stopped the stack, or nil.
func (s *Stack) Err() error { return s.link.Err() }

// Close resets every relayed connection, closes the device and waits for
// the stack's goroutines.
func (s *Stack) Close() {
	s.relay.close()
	// Packets still delayed would reach a closing stack: drop them.
	s.link.line.Close()
	s.gv.Close()
	s.link.Close()
	// The reader may be delivering a packet it read before the device
	// closed; gVisor's Wait waits for the link endpoint while holding the
	// stack's lock, which that delivery may need, so let the reader finish
	// first.
	s.link.Wait()
	s.gv.Wait()
}
