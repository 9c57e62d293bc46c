//go:build linux

package tundev

import (
	"bytes"
	"testing"
	"time"
)

// TestTryRead: on a real TUN device, TryRead returns (0, nil) at once when
// nothing is queued and the queued datagram when one is; ReadWaited says
// whether a Read found the datagram queued or had to wait for it. The
// reader's UDP bursts rest on both. Needs root; skipped otherwise.
func TestTryRead(t *testing.T) {
	dev, conn := testDevice(t)
	bufs := make([][]byte, dev.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, SlotSize(i, DefaultMTU))
	}
	sizes, hdrs := make([]int, len(bufs)), make([]VirtioNetHdr, len(bufs))
	// drain reads with read until it returns the datagram carrying
	// payload, skipping what else the device sends (IPv6 neighbour
	// discovery when it comes up); false if read returns nothing.
	drain := func(read func() (int, error), payload []byte) bool {
		t.Helper()
		for {
			n, err := read()
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return false
			}
			if n == 1 && bytes.HasSuffix(bufs[0][:sizes[0]], payload) {
				return true
			}
		}
	}
	try := func() (int, error) { return dev.TryRead(bufs, sizes, hdrs, 0) }
	read := func() (int, error) { return dev.Read(bufs, sizes, hdrs, 0) }

	// Whatever the device sent when it came up, then nothing.
	start := time.Now()
	if drain(try, []byte("never sent")) {
		t.Fatal("TryRead returned a datagram nobody sent")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("TryRead on an empty device took %v", d)
	}

	// A datagram queued before the read: TryRead takes it.
	if _, err := conn.Write([]byte("queued-1")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if !drain(try, []byte("queued-1")) {
		t.Fatal("TryRead did not return the queued datagram")
	}
	// And Read takes one without waiting.
	if _, err := conn.Write([]byte("queued-2")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if !drain(read, []byte("queued-2")) {
		t.Fatal("Read did not return the queued datagram")
	}
	if dev.ReadWaited() {
		t.Error("ReadWaited after a Read that found the datagram queued: true, want false")
	}

	// A datagram sent while Read waits.
	go func() {
		time.Sleep(50 * time.Millisecond)
		conn.Write([]byte("later"))
	}()
	if !drain(read, []byte("later")) {
		t.Fatal("Read did not return the datagram sent while it waited")
	}
	if !dev.ReadWaited() {
		t.Error("ReadWaited after a Read that waited: false, want true")
	}
}
