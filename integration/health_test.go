//go:build linux

package integration

// What the reliability tests read of the daemon's health: goroutines, heap,
// and a garbage collection on demand, all through the control socket.

import (
	"context"
	"testing"
	"time"

	"github.com/uloop/uloop/control"
)

// goroutineSlack is how far go_goroutines may stay above a baseline once the
// daemon is idle again: the scrape itself runs on a goroutine or two of the
// control server, and a timer or a pool may start one. A leak of one
// goroutine per flow shows as hundreds or thousands.
const goroutineSlack = 5

// collectGarbage asks the daemon for a heap profile with gc=1, which makes
// it run a full garbage collection first (net/http/pprof), twice: the
// second empties what sync.Pools kept in their victim caches through the
// first. After it, go_memstats_heap_inuse_bytes is the live heap, not
// whatever garbage the last automatic cycle left.
func collectGarbage(t *testing.T, ns *netNS) {
	t.Helper()
	for range 2 {
		if _, err := control.New(ns.ns, 10*time.Second).Get(context.Background(), "/debug/pprof/heap?gc=1"); err != nil {
			t.Fatalf("forcing a GC in uloopd in %s: %v", ns, err)
		}
	}
}
