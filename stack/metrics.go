package stack

import "sync/atomic"

// Metrics counts what the data path did. Every field is safe for concurrent
// use; the daemon exports them (see docs/architecture.md for the names).
type Metrics struct {
	TUNRxPackets   atomic.Uint64 // packets read from the device
	TUNRxBytes     atomic.Uint64
	TUNTxPackets   atomic.Uint64 // packets written to the device
	TUNTxBytes     atomic.Uint64
	TUNWriteErrors atomic.Uint64 // device writes that failed (packets lost)
	// TUNRxChecksumTrusted counts packets read whose checksums the kernel
	// vouched for (it built them, or verified them): nobody sums them.
	TUNRxChecksumTrusted atomic.Uint64

	TCPConnections       atomic.Uint64 // TCP connections relayed
	TCPConnectionsActive atomic.Int64
	TCPRefused           atomic.Uint64 // connects answered with RST (no listener, or dial failed)

	UDPFlows        atomic.Uint64 // UDP flows relayed
	UDPFlowsActive  atomic.Int64
	UDPFlowsExpired atomic.Uint64 // flows closed after the idle timeout

	FlowsRejected atomic.Uint64 // new flows refused because MaxFlows were relayed

	ICMPEchoReplies    atomic.Uint64 // echo requests answered by the stack
	PassthroughPackets atomic.Uint64 // packets written back to the kernel unchanged
	DroppedPackets     atomic.Uint64 // packets read that were not IPv4, or malformed
	ACKsCoalesced      atomic.Uint64 // pure ACKs never written: a later segment of the flow carried them
	UDPGSODatagrams    atomic.Uint64 // datagrams written as part of a UDP GSO packet (see udpGSO)
}
