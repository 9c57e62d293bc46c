package stack

import (
	"testing"

	"github.com/uloop/uloop/tundev"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestDefaultMTUSegmentsWhole: at the default MTU, the largest TCP segment
// the kernel sends fits in one segment of the stack's, so the relay does
// not split every full segment in two. gVisor's TCP sender with host GSO
// puts at most GSOMaxSize - TCPTotalHeaderMaximumSize - 1 data bytes in a
// segment (tcp.sender.sendData); the kernel at most MTU - 20 - 20 (IPv4
// and TCP headers, no options). integration.TestRelayKeepsSegmentsWhole
// checks the effect with real sockets.
func TestDefaultMTUSegmentsWhole(t *testing.T) {
	var e linkEndpoint
	stackMax := int(e.GSOMaxSize()) - header.TCPTotalHeaderMaximumSize - 1
	kernelMax := tundev.DefaultMTU - header.IPv4MinimumSize - header.TCPMinimumSize
	if kernelMax > stackMax {
		t.Errorf("at MTU %d the kernel sends up to %d data bytes per segment, the stack %d: every full segment is relayed as two", tundev.DefaultMTU, kernelMax, stackMax)
	}
	// Not smaller than it must be either: the larger the segments, the
	// fewer packets per byte.
	if kernelMax < stackMax {
		t.Errorf("DefaultMTU %d is %d bytes under what the stack's segments allow", tundev.DefaultMTU, stackMax-kernelMax)
	}
}
