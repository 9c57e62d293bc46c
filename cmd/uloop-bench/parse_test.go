//go:build linux

package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The samples in testdata/ are the real output of iperf 3.12 and iputils
// ping 20221126 on kernel lo and on uloop, captured in network namespaces.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(got, want float64) bool {
	return math.Abs(got-want) <= 1e-9*math.Max(1, math.Abs(want))
}

func TestParseIperf(t *testing.T) {
	tests := []struct {
		file        string
		gbps        float64
		retransmits float64
		loss        float64
		bytes       float64 // received: the run's work
		seconds     float64 // the receiver's, over which gbps is bytes
	}{
		// TCP: end.sum_received.bits_per_second and .bytes,
		// end.sum_sent.retransmits.
		{"iperf3-tcp-kernel.json", 21.031216783832073, 0, 0, 2629304320, 1.000153},
		{"iperf3-tcp-uloop.json", 4.89107407703404, 2, 0, 1224005961, 2.002024},
		// -R: the server sends; sum_sent is still the sender's.
		{"iperf3-tcp-reverse-uloop.json", 4.5558211713134985, 3, 0, 569539150, 1.000108},
		// -P 4: the sums over the four streams.
		{"iperf3-tcp-p4-uloop.json", 3.8193419963146434, 26, 0, 478796532, 1.002888},
		// UDP: the received rate from end.sum_received, not
		// end.sum.bits_per_second, which 3.12 fills with the rate sent
		// (2.09 Gbit/s in this sample); loss from end.sum.lost_percent.
		// The bytes likewise: end.sum.bytes (and sum_sent.bytes) are
		// those sent; sum_received.bytes those received, which is
		// (sum_received.packets - lost_packets) x 1400 here:
		// (181648 - 102585) x 1400.
		{"iperf3-udp-1400-kernel.json", 0.8843630030001237, 0, 56.23561013046815, 110688200, 1.001292},
		{"iperf3-udp-1400-uloop.json", 0.24827829042295462, 0, 86.7094565682499, (185280 - 162112) * 1400, 1.045124},
		{"iperf3-udp-32k-uloop.json", 1.4102338852724433, 0, 91.69811320754717, (67840 - 62208) * 32768, 1.046915},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f, err := parseIperf(readTestdata(t, tt.file))
			if err != nil {
				t.Fatalf("parseIperf: %v", err)
			}
			if !near(f.ReceivedGbps, tt.gbps) {
				t.Errorf("received: got %v Gbit/s, want %v", f.ReceivedGbps, tt.gbps)
			}
			if f.Retransmits != tt.retransmits {
				t.Errorf("retransmits: got %v, want %v", f.Retransmits, tt.retransmits)
			}
			if !near(f.LostPercent, tt.loss) {
				t.Errorf("loss: got %v%%, want %v%%", f.LostPercent, tt.loss)
			}
			if f.ReceivedBytes != tt.bytes {
				t.Errorf("received: got %v bytes, want %v", f.ReceivedBytes, tt.bytes)
			}
			// The work and the rate the case reports are the same
			// bytes: the rate is them over the receiver's time.
			if got := f.ReceivedBytes * 8 / tt.seconds / 1e9; math.Abs(got-f.ReceivedGbps) > 1e-6*f.ReceivedGbps {
				t.Errorf("bytes x 8 / seconds: got %v Gbit/s, want the received rate %v", got, f.ReceivedGbps)
			}
			if out := f.tcpOutput(nil); out.Work != f.ReceivedBytes {
				t.Errorf("tcpOutput: work %v, want the bytes received", out.Work)
			}
			if raw := rawIperfEnd(readTestdata(t, tt.file)); !json.Valid(raw) || !strings.Contains(string(raw), `"sum_sent"`) {
				t.Errorf("rawIperfEnd: got %.80q, want the compacted end object", raw)
			}
		})
	}
}

// Before sum_received existed for UDP the received rate is worked out from
// the datagrams that arrived.
func TestParseIperfUDPWithoutSumReceived(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(readTestdata(t, "iperf3-udp-1400-uloop.json"), &doc); err != nil {
		t.Fatal(err)
	}
	end := doc["end"].(map[string]any)
	delete(end, "sum_received")
	delete(end, "sum_sent")
	b, _ := json.Marshal(doc)
	f, err := parseIperf(b)
	if err != nil {
		t.Fatalf("parseIperf: %v", err)
	}
	want := (186960.0 - 162112) * 1400 * 8 / 1.045124 / 1e9
	if !near(f.ReceivedGbps, want) {
		t.Errorf("received: got %v Gbit/s, want %v", f.ReceivedGbps, want)
	}
	if want := (186960.0 - 162112) * 1400; f.ReceivedBytes != want {
		t.Errorf("received: got %v bytes, want %v", f.ReceivedBytes, want)
	}
	if !near(f.LostPercent, 86.7094565682499) {
		t.Errorf("loss: got %v, want 86.7094565682499", f.LostPercent)
	}
}

func TestParseIperfErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		// iperf 3.12 exits 0 here: only "error" tells.
		{"refused", string(readTestdata(t, "iperf3-refused.json")), "Connection refused"},
		{"not JSON", "iperf3: error - unable to connect", "iperf3 JSON"},
		{"empty", "", "iperf3 JSON"},
		{"no sums", `{"start":{"test_start":{"protocol":"TCP"}},"end":{}}`, "no end.sum_received"},
		{"UDP no loss", `{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum":{"bits_per_second":1}}}`, "lost_percent"},
		{"SCTP", `{"start":{"test_start":{"protocol":"SCTP"}},"end":{}}`, "unexpected protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseIperf([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseIperf: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParsePing(t *testing.T) {
	tests := []struct {
		file                 string
		n, sent, received    int
		min, p50, p99, maxUS float64
	}{
		// Expected values worked out independently (python3, nearest
		// rank) from the same files. ping prints 3 significant digits
		// from 10 ms up ("time=25.9 ms"; its summary line says 25.859):
		// the per-echo figure is the one parsed.
		{"ping-kernel.txt", 20, 20, 20, 7, 8, 170, 170},
		{"ping-uloop-2000.txt", 2000, 2000, 2000, 10, 12, 136, 25900},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			r, err := parsePing(readTestdata(t, tt.file))
			if err != nil {
				t.Fatalf("parsePing: %v", err)
			}
			s := r.Summary
			if len(r.RTT) != tt.n || s.Count != tt.n {
				t.Errorf("echoes: got %d (summary %d), want %d", len(r.RTT), s.Count, tt.n)
			}
			if r.Transmitted != tt.sent || r.Received != tt.received {
				t.Errorf("totals: got %d sent %d received, want %d and %d", r.Transmitted, r.Received, tt.sent, tt.received)
			}
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"min", s.MinUS, tt.min}, {"p50", s.P50US, tt.p50}, {"p99", s.P99US, tt.p99}, {"max", s.MaxUS, tt.maxUS}} {
				if math.Abs(c.got-c.want) > 1e-6 {
					t.Errorf("%s: got %v µs, want %v", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestParsePingErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"lo down", string(readTestdata(t, "ping-unreachable.txt")), "no echo replies"},
		{"no totals", "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.041 ms\n", "no totals"},
		{"empty", "", "no totals"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parsePing([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parsePing: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestProcFigures checks the units of what the report takes from procfs,
// on this process: CPU time that grows by what a busy loop burns (as
// getrusage counts it, so that a loaded machine, which stretches the loop's
// wall time, does not matter), and a peak RSS in KiB.
func TestProcFigures(t *testing.T) {
	rusageCPU := func() time.Duration {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	ct0, err := procCPUTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for ru0 := rusageCPU(); rusageCPU()-ru0 < 100*time.Millisecond; {
	}
	ct1, err := procCPUTimes(os.Getpid())
	cpu0, cpu1 := ct0.total(), ct1.total()
	// procfs counts in 10 ms ticks, and other goroutines of the test
	// binary may burn a little too.
	if d := cpu1 - cpu0; err != nil || d < 80*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("CPU time over a busy loop of 100 ms of CPU: grew by %v (%v), want about 100ms", d, err)
	}
	// The split: a busy loop runs in user mode.
	if ct, err := procCPUTimes(os.Getpid()); err != nil || ct.user < 80*time.Millisecond || ct.system < 0 || ct.total() < cpu1 {
		t.Errorf("user and system CPU time: %+v (%v), want user at least the loop's 80 ms and a total of at least %v", ct, err, cpu1)
	}
	if kib, err := procPeakRSS(os.Getpid()); err != nil || kib < 1024 || kib > 64<<20 {
		t.Errorf("peak RSS: got %d KiB (%v), want a few MiB", kib, err)
	}
}

// The end-to-end test's check that each iperf3 case ran the mode its title
// promises, on the captured samples: it accepts the right one and catches a
// lost -R, -P 4 or -u.
func TestCheckIperfMode(t *testing.T) {
	end := func(file string) any {
		var v any
		if err := json.Unmarshal(rawIperfEnd(readTestdata(t, file)), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		caseName, file string
		ok             bool
	}{
		{"tcp-1", "iperf3-tcp-uloop.json", true},
		{"tcp-1-reverse", "iperf3-tcp-reverse-uloop.json", true},
		{"tcp-4", "iperf3-tcp-p4-uloop.json", true},
		{"udp-1400", "iperf3-udp-1400-uloop.json", true},
		{"udp-32k", "iperf3-udp-32k-uloop.json", true},
		{"tcp-1-reverse", "iperf3-tcp-uloop.json", false},
		{"tcp-1", "iperf3-tcp-reverse-uloop.json", false},
		{"tcp-4", "iperf3-tcp-uloop.json", false},
		{"udp-1400", "iperf3-tcp-uloop.json", false},
		{"tcp-1", "iperf3-udp-1400-uloop.json", false},
	}
	for _, tt := range tests {
		t.Run(tt.caseName+" "+tt.file, func(t *testing.T) {
			if err := checkIperfMode(tt.caseName, end(tt.file)); (err == nil) != tt.ok {
				t.Errorf("got %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if err := checkIperfMode("tcp-1", nil); err == nil {
		t.Error("no raw object: got no error, want one")
	}
}
