//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"one", []float64{3}, 3},
		{"odd unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"repeats", []float64{2, 2, 2, 7}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			if got := median(in); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("median reordered its input: got %v, want %v", in, tt.in)
			}
		})
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil): got %v, want NaN", got)
	}
}

func TestPercentile(t *testing.T) {
	seq := func(n int) []float64 {
		s := make([]float64, n)
		for i := range s {
			s[i] = float64(i + 1)
		}
		return s
	}
	tests := []struct {
		name   string
		sorted []float64
		p      float64
		want   float64
	}{
		{"p50 of 1..100", seq(100), 50, 50},
		{"p99 of 1..100", seq(100), 99, 99},
		{"p99 of 1..1000: the 990th", seq(1000), 99, 990},
		{"p99.9 of 1..1000", seq(1000), 99.9, 999},
		{"p100", seq(10), 100, 10},
		{"p50 of 1..5", seq(5), 50, 3},
		{"p99 of one", []float64{7}, 99, 7},
		{"tiny p is the minimum", seq(10), 0.001, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if got := percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("percentile(nil): got %v, want NaN", got)
	}
}

func TestSummarizeDurations(t *testing.T) {
	ds := []time.Duration{30 * time.Microsecond, 10 * time.Microsecond, 20 * time.Microsecond, 40 * time.Microsecond}
	s := summarizeDurations(ds)
	want := latencySummary{Count: 4, MinUS: 10, MeanUS: 25, P50US: 20, P90US: 40, P99US: 40, P999US: 40, MaxUS: 40}
	if s != want {
		t.Errorf("got %+v, want %+v", s, want)
	}
	if s := summarizeDurations(nil); s != (latencySummary{}) {
		t.Errorf("no samples: got %+v, want zeros", s)
	}
}

func TestPairRatios(t *testing.T) {
	yes := []bool{true, true, true, true}
	tests := []struct {
		name          string
		kernel, uloop []float64
		kOK, uOK      []bool
		want          []float64
	}{
		{"all pairs", []float64{10, 20, 40}, []float64{5, 5, 30}, yes, yes, []float64{0.5, 0.25, 0.75}},
		{"failed runs drop their pair only", []float64{10, 20, 40}, []float64{5, 5, 30},
			[]bool{true, false, true}, []bool{true, true, false}, []float64{0.5}},
		{"kernel zero: no ratio", []float64{0, 10}, []float64{3, 20}, yes, yes, []float64{2}},
		{"uneven counts (interrupted)", []float64{10, 10}, []float64{20}, yes, yes, []float64{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pairRatios(tt.kernel, tt.uloop, tt.kOK, tt.uOK); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// The median of the per-pair ratios is not the ratio of the medians: with
// drift between pairs the two differ, and only the first compares runs that
// saw the same conditions.
func TestSummarizeUsesPairRatios(t *testing.T) {
	c := &caseRecord{Name: "x", Metrics: []metric{mGbps, mRetransmits}}
	cpu := func(v float64) *float64 { return &v }
	add := func(side string, rep int, gbps float64, errText string) {
		r := runRecord{Side: side, Rep: rep, Error: errText}
		if errText == "" {
			r.Values = map[string]float64{"gbps": gbps, "retransmits": 0}
		}
		if side == "uloop" {
			r.DaemonCPUSeconds = cpu(float64(rep))
		}
		c.Runs = append(c.Runs, r)
	}
	// The machine slows down by half after the first pair.
	add("kernel", 1, 20, "")
	add("uloop", 1, 10, "")
	add("kernel", 2, 10, "")
	add("uloop", 2, 5, "")
	add("kernel", 3, 10, "")
	add("uloop", 3, 5, "")
	add("kernel", 4, 10, "")
	add("uloop", 4, 0, "iperf3: boom")
	c.summarize()

	s := c.Summary["gbps"]
	if want := (spread{N: 4, Median: 10, Min: 10, Max: 20}); s.Kernel != want {
		t.Errorf("kernel: got %+v, want %+v", s.Kernel, want)
	}
	if want := (spread{N: 3, Median: 5, Min: 5, Max: 10}); s.Uloop != want {
		t.Errorf("uloop: got %+v, want %+v (the failed run left out)", s.Uloop, want)
	}
	if want := []float64{0.5, 0.5, 0.5}; !slices.Equal(s.PairRatios, want) {
		t.Errorf("pair ratios: got %v, want %v", s.PairRatios, want)
	}
	if s.Ratio.Median != 0.5 {
		t.Errorf("ratio: got %v, want 0.5 (ratio of the medians would be %v)", s.Ratio.Median, s.Uloop.Median/s.Kernel.Median)
	}
	if want := (spread{N: 4, Median: 2.5, Min: 1, Max: 4}); c.DaemonCPU != want {
		t.Errorf("uloopd CPU: got %+v, want %+v", c.DaemonCPU, want)
	}
	if r := c.Summary["retransmits"]; len(r.PairRatios) != 0 || r.Ratio.N != 0 {
		t.Errorf("retransmits, kernel 0 in every pair: got ratios %v, want none", r.PairRatios)
	}
}

// uloopd's CPU per unit of work: seconds per GB (1e9 bytes) for bytes,
// microseconds per round trip, connection or echo for the others.
func TestWorkPerUnit(t *testing.T) {
	tests := []struct {
		name      string
		u         workUnit
		cpu, work float64
		want      float64
		ok        bool
	}{
		{"4.4 s on 5 GB", workBytes, 4.4, 5e9, 0.88, true},
		{"GB is 1e9 bytes, not 2^30", workBytes, 1, 1 << 30, 1e9 / (1 << 30), true},
		{"3 s on 150000 round trips", workRoundTrips, 3, 150000, 20, true},
		{"2.5 s on 10000 connections", workConns, 2.5, 10000, 250, true},
		{"0.05 s on 1000 echoes", workEchoes, 0.05, 1000, 50, true},
		{"no CPU is a figure", workEchoes, 0, 1000, 0, true},
		{"no work", workBytes, 1, 0, 0, false},
		{"negative CPU", workBytes, -1, 1e9, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.u.perUnit(tt.cpu, tt.work)
			if ok != tt.ok || !near(got, tt.want) {
				t.Errorf("got %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
	for _, c := range cases {
		if c.Work == nil && !c.UloopOnly {
			t.Errorf("case %s: counts no work, so has no CPU per unit", c.Name)
		}
	}
}

// The summary's CPU per unit is the median over the uloop runs that
// succeeded; the row shows it with its range next to the CPU per run.
func TestSummarizeCPUPerUnit(t *testing.T) {
	c := &caseRecord{Name: "tcp-rr", Metrics: []metric{{Key: "per_s", Label: "round trips", Higher: true}}, WorkUnit: &workRoundTrips}
	f := func(v float64) *float64 { return &v }
	for i, pu := range []float64{22, 20, 21, 99} {
		k := runRecord{Side: "kernel", Rep: i + 1, WallSeconds: 5, Values: map[string]float64{"per_s": 1}, Work: f(1e5)}
		u := runRecord{Side: "uloop", Rep: i + 1, WallSeconds: 5, Values: map[string]float64{"per_s": 1}, Work: f(1e5),
			DaemonCPUSeconds: f(pu / 10), DaemonCPUPerUnit: f(pu)}
		if pu == 99 {
			// A failed run keeps its CPU seconds but has no figures.
			u.Error, u.Values = "boom", nil
		}
		c.Runs = append(c.Runs, k, u)
	}
	c.summarize()
	if want := (spread{N: 3, Median: 21, Min: 20, Max: 22}); c.DaemonCPUPerUnit != want {
		t.Errorf("CPU per unit: got %+v, want %+v", c.DaemonCPUPerUnit, want)
	}
	want := "| CPU per run, tcp-rr | 2.15 s (43% of one core); 21.0 µs per round trip (20.0–22.0) |\n"
	if got := c.daemonCPURow(); got != want {
		t.Errorf("row:\ngot  %q\nwant %q", got, want)
	}
	// One run: no range. No work unit: the CPU per run alone.
	one := &caseRecord{Name: "tcp-1", WorkUnit: &workBytes, Runs: []runRecord{
		{Side: "uloop", WallSeconds: 5, DaemonCPUSeconds: f(4.56), DaemonCPUPerUnit: f(0.88)}}}
	one.summarize()
	if got, want := one.daemonCPURow(), "| CPU per run, tcp-1 | 4.56 s (91% of one core); 0.880 s per GB |\n"; got != want {
		t.Errorf("one run:\ngot  %q\nwant %q", got, want)
	}
	one.WorkUnit = nil
	if got, want := one.daemonCPURow(), "| CPU per run, tcp-1 | 4.56 s (91% of one core) |\n"; got != want {
		t.Errorf("no work unit:\ngot  %q\nwant %q", got, want)
	}
	// The kernel's share: the median over the runs of stime / (utime+stime).
	sys := &caseRecord{Name: "tcp-1", WorkUnit: &workBytes}
	for _, r := range [][2]float64{{4, 2}, {5, 3}, {4, 1}} {
		sys.Runs = append(sys.Runs, runRecord{Side: "uloop", WallSeconds: 5, DaemonCPUSeconds: f(r[0]), DaemonSystemSeconds: f(r[1]), DaemonCPUPerUnit: f(r[0] / 5)})
	}
	sys.summarize()
	if want := (spread{N: 3, Median: 0.5, Min: 0.25, Max: 0.6}); sys.DaemonSystemShare != want {
		t.Errorf("kernel share: got %+v, want %+v", sys.DaemonSystemShare, want)
	}
	if got, want := sys.daemonCPURow(), "| CPU per run, tcp-1 | 4.00 s (80% of one core); 0.800 s per GB (0.800–1.00); 50% in the kernel |\n"; got != want {
		t.Errorf("kernel share row:\ngot  %q\nwant %q", got, want)
	}
	if got := (&caseRecord{Name: "none"}).daemonCPURow(); got != "" {
		t.Errorf("no uloop run: got row %q, want none", got)
	}
}

func TestFmtSig3(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{{0, "0"}, {0.9, "0.900"}, {0.88, "0.880"}, {0.0834, "0.0834"}, {1, "1.00"}, {21.04, "21.0"}, {475, "475"}}
	for _, tt := range tests {
		if got := fmtSig3(tt.in); got != tt.want {
			t.Errorf("fmtSig3(%v): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCheckValues(t *testing.T) {
	ms := []metric{mGbps, mRetransmits}
	tests := []struct {
		name string
		vals map[string]float64
		ok   bool
	}{
		{"fine", map[string]float64{"gbps": 3, "retransmits": 0}, true},
		{"zero throughput", map[string]float64{"gbps": 0, "retransmits": 0}, false},
		{"missing", map[string]float64{"gbps": 3}, false},
		{"negative count", map[string]float64{"gbps": 3, "retransmits": -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkValues(ms, tt.vals); (err == nil) != tt.ok {
				t.Errorf("got error %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestFmtNum(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{{0, "0"}, {0.0834, "0.0834"}, {0.5, "0.5"}, {4.891, "4.89"}, {21.03, "21.0"}, {164.4, "164"}, {16678.2, "16678"}}
	for _, tt := range tests {
		if got := fmtNum(tt.in); got != tt.want {
			t.Errorf("fmtNum(%v): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		runs    int
		dur     time.Duration
		pings   int
		idle    int
		wantErr string
	}{
		{"defaults", nil, 3, 5 * time.Second, 10000, 5000, ""},
		{"quick", []string{"--quick"}, 1, 2 * time.Second, 1000, 1000, ""},
		{"quick, explicit flags win", []string{"--quick", "--runs", "2", "--time", "3s", "--idle-conns", "200"}, 2, 3 * time.Second, 1000, 200, ""},
		{"idle connections", []string{"--idle-conns", "8000", "--cases", "tcp-idle"}, 3, 5 * time.Second, 10000, 8000, ""},
		{"fractional time", []string{"--time", "1500ms"}, 0, 0, 0, 0, "whole number"},
		{"too few pings", []string{"--pings", "10"}, 0, 0, 0, 0, "at least 1000"},
		{"too few idle connections", []string{"--idle-conns", "10"}, 0, 0, 0, 0, "at least 100"},
		{"no runs", []string{"--runs", "0"}, 0, 0, 0, 0, "at least 1"},
		{"unknown case", []string{"--cases", "tcp-1,nope"}, 0, 0, 0, 0, `unknown case "nope"`},
		{"stray argument", []string{"now"}, 0, 0, 0, 0, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.runs != tt.runs || cfg.duration != tt.dur || cfg.pings != tt.pings || cfg.idleConns != tt.idle {
				t.Errorf("got runs %d time %v pings %d idle conns %d, want %d %v %d %d",
					cfg.runs, cfg.duration, cfg.pings, cfg.idleConns, tt.runs, tt.dur, tt.pings, tt.idle)
			}
		})
	}
	cfg, err := parseFlags([]string{"--cases", "ping,tcp-1"})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{cfg: cfg}
	var got []string
	for _, c := range h.selectedCases() {
		got = append(got, c.Name)
	}
	if want := []string{"tcp-1", "ping"}; !slices.Equal(got, want) {
		t.Errorf("--cases ping,tcp-1: got %v, want %v (the fixed order)", got, want)
	}
}

// sampleReport is a report with two cases of two pairs each, as run would
// leave it, without running anything.
func sampleReport() *report {
	r := newReport(config{runs: 2, duration: 5 * time.Second, pings: 10000, uloopd: "/nonexistent/uloopd"})
	r.Started = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	r.Machine = machine{CPUModel: "Test CPU", CPUs: 2, KernelRelease: "6.18.0", GoVersion: "go1.26.8",
		Iperf3Version: "iperf 3.12", PingVersion: "ping from iputils 20221126", LoadAvgStart: "0.5 0.5 0.5", LoadAvgEnd: "1.0 0.7 0.6"}
	r.Namespaces["kernel"] = nsRecord{Name: "ulb-1-kernel", LoMTU: 65536, TCPCongestionControl: "bbr"}
	r.Namespaces["uloop"] = nsRecord{Name: "ulb-1-uloop", LoMTU: 65536, Ulo0MTU: 65535, TCPCongestionControl: "bbr"}
	r.Daemon.PeakRSSKiB = 65072
	cpu := 4.5
	// Work per run, by case and pair: 4.5 s of CPU on 5 GB and 4.5 GB is
	// 0.9 and 1.0 s per GB; on 10000 and 9000 echoes 450 and 500 µs each.
	work := map[string][]float64{"tcp-1": {5e9, 4.5e9}, "ping": {10000, 9000}}
	for _, c := range cases {
		if c.Name != "tcp-1" && c.Name != "ping" {
			continue
		}
		rec := &caseRecord{Name: c.Name, Title: c.Title, TCP: c.TCP, Metrics: c.Metrics, WorkUnit: c.Work}
		for rep := 1; rep <= 2; rep++ {
			for _, side := range []string{"kernel", "uloop"} {
				vals := map[string]float64{}
				for i, m := range c.Metrics {
					v := float64(10 * (i + 1) * rep)
					if side == "uloop" {
						v /= 4
					}
					vals[m.Key] = v
				}
				w := work[c.Name][rep-1]
				run := runRecord{Side: side, Rep: rep, Values: vals, WallSeconds: 5, Work: &w}
				if side == "uloop" {
					run.DaemonCPUSeconds = &cpu
					v, _ := c.Work.perUnit(cpu, w)
					run.DaemonCPUPerUnit = &v
				}
				rec.Runs = append(rec.Runs, run)
			}
		}
		rec.summarize()
		r.Cases = append(r.Cases, rec)
	}
	return r
}

func TestMarkdown(t *testing.T) {
	md := sampleReport().markdown()
	for _, want := range []string{
		"| Case | Metric | kernel lo | uloop | uloop/kernel |",
		"| iperf3 TCP, 1 stream | throughput, Gbit/s ↑ | 15.0 (10.0–20.0) | 3.75 (2.50–5.00) | **0.25** (0.25–0.25) |",
		"|  | retransmits, segments ↓ | 30 (20–40) | 8 (5–10) | – |",
		"| ping 127.0.0.1 (ICMP echo, one at a time) | p50, µs ↓ |",
		"MTU: kernel side lo 65536; uloop side ulo0 65535",
		"Test CPU (2 CPUs), Linux 6.18.0",
		"| CPU (utime+stime) over the uloop runs of the TCP cases | 9.00 s in 10.0 s (90% of one core) |",
		"| CPU per run, tcp-1 | 4.50 s (90% of one core); 0.950 s per GB (0.900–1.00) |",
		"| CPU per run, ping | 4.50 s (90% of one core); 475 µs per echo (450–500) |",
		"| peak RSS (VmHWM) | 63.5 MiB |",
		"1 GB = 10^9 bytes",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, md)
		}
	}
}

func TestWriteReport(t *testing.T) {
	r := sampleReport()
	dir := filepath.Join(t.TempDir(), "out")
	if err := r.write(dir, r.markdown()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bench.json", "bench.md", "bench.png", "bench.svg"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Size() == 0 {
			t.Errorf("%s: got %v, want a non-empty file", name, err)
		}
	}
	png, _ := os.ReadFile(filepath.Join(dir, "bench.png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("bench.png: got %.8q, want a PNG signature", png)
	}
	var back report
	b, _ := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	if len(back.Cases) != 2 || back.Cases[0].Summary["gbps"].Ratio.Median != 0.25 {
		t.Errorf("bench.json round trip: got %d cases, want 2 with tcp-1's ratio 0.25", len(back.Cases))
	}
}

// A case with no successful pair still charts (as "n/a"), and so does a
// report with no latency case.
func TestChartsPartial(t *testing.T) {
	r := sampleReport()
	r.Cases = r.Cases[:1]
	r.Cases[0].Summary["gbps"] = metricSummary{}
	written, err := writeCharts(r, t.TempDir())
	if err != nil || len(written) != 2 {
		t.Fatalf("got %v, %v; want two files", written, err)
	}
}

// The Go TCP clients against an in-process echo server on 127.0.0.1 (the
// host's loopback, no root needed).
func TestGoClients(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	for _, conns := range []int{1, 16} {
		rr, err := tcpRR(l.Addr().String(), 200*time.Millisecond, conns)
		if err != nil {
			t.Fatalf("tcpRR, %d connections: %v", conns, err)
		}
		if rr.Connections != conns || rr.Count == 0 || rr.PerSecond <= 0 || rr.Latency.P50US <= 0 || rr.Latency.P99US < rr.Latency.P50US {
			t.Errorf("tcpRR: got %+v, want round trips on %d connections with p99 >= p50 > 0", rr, conns)
		}
		if out := rr.output(); rr.WarmUp != 200*conns || out.Work != float64(rr.Count+200*conns) || rr.Latency.Count != rr.Count {
			t.Errorf("tcpRR: warm-up %d, work %v, %d latencies for %d round trips; want 200 per connection, work their sum with the timed ones",
				rr.WarmUp, out.Work, rr.Latency.Count, rr.Count)
		}
	}
	crr, err := tcpCRR(l.Addr().String(), 200*time.Millisecond)
	if err != nil {
		t.Fatalf("tcpCRR: %v", err)
	}
	if crr.Connections == 0 || crr.Failed != 0 || crr.PerSecond <= 0 || crr.WarmUpConnections != 50 || crr.Latency.Count != crr.Connections {
		t.Errorf("tcpCRR: got %+v, want connections, 50 of them in the warm-up, and no failures", crr)
	}
	l.Close()
	crr, err = tcpCRR(l.Addr().String(), 100*time.Millisecond)
	if err == nil {
		t.Errorf("tcpCRR with no server: got %+v, want a warm-up error", crr)
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   []float64
	}{
		{0, 1.3, []float64{0, 0.2, 0.4, 0.6, 0.8, 1, 1.2}},
		{0, 26.5, []float64{0, 5, 10, 15, 20, 25}},
		{0, 1.56, []float64{0, 0.2, 0.4, 0.6, 0.8, 1, 1.2, 1.4}},
		{0, 130, []float64{0, 20, 40, 60, 80, 100, 120}},
	}
	for _, tt := range tests {
		var got []float64
		for _, tk := range (niceTicks{}).Ticks(tt.lo, tt.hi) {
			got = append(got, tk.Value)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Ticks(%v, %v): got %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
	}
}

// A warning keeps the run's figures; a failed check turns it into an error.
func TestRunOneWarning(t *testing.T) {
	h := &harness{kernel: &netNS{side: "kernel"}}
	mk := func(v float64) benchCase {
		return benchCase{Name: "w", Metrics: []metric{{Key: "per_s", Label: "connections", Higher: true}},
			run: func(context.Context, *harness, *netNS) (runOutput, error) {
				return runOutput{Values: map[string]float64{"per_s": v}}, warning("3 of 10 connections failed")
			}}
	}
	r := h.runOne(context.Background(), mk(7), h.kernel, 1)
	if r.Warning != "3 of 10 connections failed" || r.Error != "" || r.Values["per_s"] != 7 {
		t.Errorf("got %+v, want the figure kept with the warning", r)
	}
	r = h.runOne(context.Background(), mk(0), h.kernel, 1)
	if r.Warning != "" || !strings.Contains(r.Error, "connections figure is 0") || !strings.Contains(r.Error, "3 of 10") || r.Values != nil {
		t.Errorf("got %+v, want an error naming the zero figure and the warning", r)
	}
}

// A run records the work it did; a case that counts work and did none
// failed (its parser found nothing).
func TestRunOneWork(t *testing.T) {
	h := &harness{kernel: &netNS{side: "kernel"}}
	mk := func(work float64) benchCase {
		return benchCase{Name: "w", Metrics: []metric{mGbps}, Work: &workBytes,
			run: func(context.Context, *harness, *netNS) (runOutput, error) {
				return runOutput{Values: map[string]float64{"gbps": 3}, Work: work}, nil
			}}
	}
	r := h.runOne(context.Background(), mk(3e9), h.kernel, 1)
	if r.Error != "" || r.Work == nil || *r.Work != 3e9 || r.DaemonCPUPerUnit != nil {
		t.Errorf("got %+v, want work 3e9 and, on the kernel side, no CPU per unit", r)
	}
	r = h.runOne(context.Background(), mk(0), h.kernel, 1)
	if !strings.Contains(r.Error, "no bytes received counted") || r.Values != nil || r.Work != nil {
		t.Errorf("got %+v, want an error for the missing work", r)
	}
}

// What each case runs: a flag lost here would measure the wrong thing under
// the right title, and the numbers would look plausible.
func TestCaseCommands(t *testing.T) {
	want := map[string]string{
		"tcp-1":         "iperf3 -c 127.0.0.1 -t T -J",
		"tcp-1-reverse": "iperf3 -c 127.0.0.1 -t T -J -R",
		"tcp-4":         "iperf3 -c 127.0.0.1 -t T -J -P 4",
		"tcp-1-ipv6":    "iperf3 -6 -c ::1 -t T -J, against iperf3 -s -6 (on [::])",
		"udp-1400":      "iperf3 -c 127.0.0.1 -t T -J -u -b 0 -l 1400",
		"udp-32k":       "iperf3 -c 127.0.0.1 -t T -J -u -b 0 -l 32768",
		"udp-1400-300m": "iperf3 -c 127.0.0.1 -t T -J -u -b 300M -l 1400",
		"ping":          "ping -n -A -c N 127.0.0.1",
		"tcp-rr":        "uloop-bench _tcp-rr -duration T, against uloop-bench _echo-server",
		"tcp-rr-16":     "uloop-bench _tcp-rr -duration T -conns 16, against uloop-bench _echo-server",
		"tcp-crr":       "uloop-bench _tcp-crr -duration T, against uloop-bench _echo-server",
		"tcp-idle":      "uloop-bench _tcp-idle -conns C (C is --idle-conns), in a namespace of its own with a fresh uloopd; uloopd's VmRSS before, and 2 s after all C are open",
	}
	if len(cases) != len(want) {
		t.Errorf("got %d cases, want %d", len(cases), len(want))
	}
	for _, c := range cases {
		if c.Command != want[c.Name] {
			t.Errorf("case %s: got command %q, want %q", c.Name, c.Command, want[c.Name])
		}
	}
}
