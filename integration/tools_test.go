//go:build linux

package integration

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestTools: real programs over 127.0.0.1: python3's http.server with curl,
// and iperf3.
func TestTools(t *testing.T) {
	bothModes(t, func(t *testing.T, e *env) {
		t.Run("http-curl", func(t *testing.T) { testHTTPCurl(t, e) })
		t.Run("iperf3", func(t *testing.T) { testIperf3(t, e) })
	})
}

func testHTTPCurl(t *testing.T, e *env) {
	dir := t.TempDir()
	blob := make([]byte, 8<<20+12345)
	rand.NewChaCha8([32]byte{'h', 't', 't', 'p'}).Read(blob)
	if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	const port = 8000
	srv := e.ns.start(t, "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, strconv.Itoa(port))
	waitListening(t, srv, port)

	before := e.snapshot(t)
	out := filepath.Join(t.TempDir(), "got")
	e.ns.mustRun(t, "curl", "--silent", "--show-error", "--fail", "--max-time", "30",
		"--output", out, "http://127.0.0.1:"+strconv.Itoa(port)+"/blob")
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatalf("curl fetched %d bytes, want the %d-byte file byte for byte", len(got), len(blob))
	}
	e.requireGrew(t, before, "uloop_tcp_connections_total", 1)
	e.requireCrossed(t, before)
}

func testIperf3(t *testing.T, e *env) {
	iperf3TCP(t, e) // requires success, bytes received, and in uloop mode the path
}
