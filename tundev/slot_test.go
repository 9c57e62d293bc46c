package tundev

import "testing"

// TestSlotSize: every segment a split can put in buffer i fits it, for
// every gso_size a super-packet of the largest size can have, on a device
// whose MTU carries the segments.
func TestSlotSize(t *testing.T) {
	for _, hdrLen := range []int{28, 40, 120, maxSegmentHeaders} {
		for gso := 1; gso <= maxSuperPacket-hdrLen; gso++ {
			mtu := max(hdrLen+gso, 1280)
			if gso%97 == 0 && hdrLen+gso <= DefaultMTU {
				mtu = DefaultMTU // and on the default device
			}
			// wireguard-go's gsoSplit: segment i starts at hdrLen+i*gso.
			for i, at := 0, hdrLen; at < maxSuperPacket; i, at = i+1, at+gso {
				seg := min(gso, maxSuperPacket-at)
				if need := hdrLen + seg; need > SlotSize(i, mtu) {
					t.Fatalf("headers %d, gso_size %d, MTU %d: segment %d needs %d bytes, SlotSize gives %d", hdrLen, gso, mtu, i, need, SlotSize(i, mtu))
				}
				if i > 128 {
					break // past any batch
				}
			}
		}
	}
	total := 0
	for i := range 128 {
		total += SlotSize(i, DefaultMTU)
	}
	if total > 384<<10 {
		t.Errorf("a batch of 128 at MTU %d takes %d bytes, want under 384 KiB", DefaultMTU, total)
	}
}
