package integration

// What the reliability tests read of the daemon's health: goroutines, heap,
// and a garbage collection on demand, all through the control socket.

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
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
		if err := controlGet(ns, "/debug/pprof/heap?gc=1"); err != nil {
			t.Fatalf("forcing a GC in uloopd in %s: %v", ns, err)
		}
	}
}

// controlGet fetches path from the daemon's control socket in ns and
// discards the body.
func controlGet(ns *netNS, path string) error {
	resp, err := controlClient(ns, 10*time.Second).Get("http://uloopd" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}
