package integration

import (
	"bytes"
	"encoding/json"
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
	const port = 5201
	srv := e.ns.start(t, "iperf3", "--server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port))
	waitListening(t, srv, port)

	before := e.snapshot(t)
	r := e.ns.run(t, "iperf3", "--client", "127.0.0.1", "--port", strconv.Itoa(port), "--time", "2", "--json")
	var report struct {
		End struct {
			SumSent struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, r)
	}
	if r.code != 0 || report.Error != "" {
		t.Fatalf("iperf3 client: exit %d, error %q, want success\n%s", r.code, report.Error, r.stderr)
	}
	if report.End.SumReceived.Bytes <= 0 {
		t.Fatalf("iperf3 received bytes: got %v, want > 0", report.End.SumReceived.Bytes)
	}
	t.Logf("iperf3 %s: %.2f Gbit/s received (%.0f MiB)", e.mode, report.End.SumReceived.BitsPerSecond/1e9, report.End.SumReceived.Bytes/(1<<20))
	// A control and a data connection.
	e.requireGrew(t, before, "uloop_tcp_connections_total", 2)
	e.requireCrossed(t, before)
}
