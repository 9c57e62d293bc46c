//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIdleFigures(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	// 5000 connections that grew uloopd from 30 MiB by 73.2 MiB: 15 KiB
	// each (KiB = 1024 B); the heap by 50 MiB: 10.24 KiB each.
	r := idleResult{Connections: 5000, ConnectionsActive: 5000, RSSBeforeKiB: 30 * 1024, RSSAfterKiB: 30*1024 + 75000,
		HeapInuseBefore: f(8 << 20), HeapInuseAfter: f(8<<20 + 50<<20)}
	v, err := r.figures()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"rss_kib_per_conn": 15, "heap_kib_per_conn": 10.24, "rss_before_mib": 30, "rss_after_mib": 30 + 75000.0/1024}
	for k, w := range want {
		if !near(v[k], w) {
			t.Errorf("%s: got %v, want %v", k, v[k], w)
		}
	}
	if err := checkValues(tcpIdleCase.Metrics, v); err != nil {
		t.Errorf("checkValues: %v", err)
	}

	// No heap figure from /metrics: the run stands without it.
	r.HeapInuseBefore, r.HeapInuseAfter = nil, nil
	v, err = r.figures()
	if _, ok := v["heap_kib_per_conn"]; err != nil || ok {
		t.Errorf("no heap metric: got %v, %v; want the other figures only", v, err)
	}
	if err := checkValues(tcpIdleCase.Metrics, v); err != nil {
		t.Errorf("checkValues without the optional heap figure: %v", err)
	}

	// uloopd relays fewer (or more) than were opened: the connections
	// did not all go through uloop, and the figure is not theirs.
	for _, active := range []float64{0, 4999, 5001} {
		r.ConnectionsActive = active
		if v, err := r.figures(); err == nil || !strings.Contains(err.Error(), "uloop_tcp_connections_active") {
			t.Errorf("%v relayed of 5000: got %v, %v; want an error", active, v, err)
		}
	}

	// No growth at all cannot be: checkValues rejects it.
	r.ConnectionsActive, r.RSSAfterKiB = 5000, r.RSSBeforeKiB
	v, _ = r.figures()
	if err := checkValues(tcpIdleCase.Metrics, v); err == nil || !strings.Contains(err.Error(), "RSS growth per connection figure is 0") {
		t.Errorf("no growth: got %v, want checkValues to reject it", err)
	}
}

// countFDs is how many descriptors this process has open.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// `_tcp-idle` on the host's loopback (no root needed): all connections open,
// the line printed, held until released, and then all closed again.
func TestTCPIdle(t *testing.T) {
	const conns = 60
	before := countFDs(t)
	pr, pw := io.Pipe()
	release := make(chan struct{})
	held := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- tcpIdle(conns, idleBytes, pw, func() {
			held <- countFDs(t)
			<-release
		})
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the open line: %v", err)
	}
	var o idleOpen
	if err := json.Unmarshal([]byte(line), &o); err != nil {
		t.Fatalf("open line %q: %v", line, err)
	}
	if o.Connections != conns || o.Bytes != 1024 || o.Seconds <= 0 {
		t.Errorf("open line: got %+v, want %d connections, 1024 bytes each way", o, conns)
	}
	select {
	case n := <-held:
		// Client and server end of each, and the listener.
		if n-before < 2*conns {
			t.Errorf("descriptors while held: %d more than before, want at least %d", n-before, 2*conns)
		}
	case err := <-done:
		t.Fatalf("returned before it was released: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("returned while held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after release: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still holding 10 s after release")
	}
	// The server's descriptors close as it sees each client go.
	deadline := time.Now().Add(5 * time.Second)
	for countFDs(t) > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := countFDs(t); n > before+2 {
		t.Errorf("descriptors after: %d, before %d: connections left open", n, before)
	}
}

// More connections than the descriptor limit allows: a clear error before
// anything is opened.
func TestTCPIdleLimit(t *testing.T) {
	err := tcpIdle(1<<30, idleBytes, io.Discard, func() { t.Error("held") })
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_NOFILE") {
		t.Errorf("got %v, want an error naming RLIMIT_NOFILE", err)
	}
	if err := tcpIdle(0, idleBytes, io.Discard, func() {}); err == nil {
		t.Error("0 connections: got no error")
	}
}

// idleRecord is a tcp-idle case as two uloop runs (one with the heap
// figure, one without) leave it.
func idleRecord() *caseRecord {
	c := tcpIdleCase
	rec := &caseRecord{Name: c.Name, Title: c.Title, Command: c.Command, UloopOnly: true, Metrics: c.Metrics,
		Note: c.note(configRecord{IdleConns: 5000})}
	for rep, kib := range []float64{14, 16} {
		vals := map[string]float64{"rss_kib_per_conn": kib, "rss_before_mib": 30, "rss_after_mib": 30 + kib*5000/1024}
		if rep == 0 {
			vals["heap_kib_per_conn"] = 9.5
		}
		rec.Runs = append(rec.Runs, runRecord{Side: "uloop", Rep: rep + 1, WallSeconds: 6, Values: vals})
	}
	rec.summarize()
	return rec
}

// A uloop-only case: no kernel column, no ratio, its target instead; not
// in the chart, nor in uloopd's CPU rows; nothing that reads NaN or n/a
// where a figure is.
func TestUloopOnlyReport(t *testing.T) {
	c := idleRecord()
	s := c.Summary["rss_kib_per_conn"]
	if want := (spread{N: 2, Median: 15, Min: 14, Max: 16}); s.Uloop != want || s.Kernel.N != 0 || s.Ratio.N != 0 || len(s.PairRatios) != 0 {
		t.Errorf("summary: got %+v, want uloop %+v and no kernel figure or ratio", s, want)
	}
	if c.DaemonCPU.N != 0 || c.DaemonCPUPerUnit.N != 0 {
		t.Errorf("uloopd CPU: got %+v, %+v; want none (the shared uloopd did not carry it)", c.DaemonCPU, c.DaemonCPUPerUnit)
	}

	r := sampleReport()
	r.Config.IdleConns = 5000
	r.Cases = append(r.Cases, c)
	md := r.markdown()
	for _, want := range []string{
		"| Idle TCP connections held open through a fresh uloopd, 1 KiB moved each way on each *(uloop only)* | RSS growth per connection, KiB ↓ | – | 15.0 (14.0–16.0) | target ≤ 12: **not met** |",
		"|  | Go heap in use, growth per connection, KiB ↓ | – | 9.50 | – |",
		"|  | RSS before, MiB ↓ | – | 30.0 (30.0–30.0) | – |",
		"- `tcp-idle`: a fresh uloopd per run, 5000 connections: its RSS growth",
		"divided by 5000, in KiB (1024 B)",
		// The other cases' rows are as they were.
		"| iperf3 TCP, 1 stream | throughput, Gbit/s ↑ | 15.0 (10.0–20.0) | 3.75 (2.50–5.00) | **0.25** (0.25–0.25) |",
		"| CPU (utime+stime) over the uloop runs of the TCP cases | 9.00 s in 10.0 s (90% of one core) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, md)
		}
	}
	for _, line := range strings.Split(md, "\n") {
		if strings.Contains(line, "Idle TCP") || strings.Contains(line, "per connection, KiB") || strings.Contains(line, "RSS with all open") {
			if strings.Contains(line, "n/a") || strings.Contains(line, "NaN") || strings.Contains(line, "**0.00**") {
				t.Errorf("uloop-only row with a figure that is not one: %s", line)
			}
		}
	}
	if strings.Contains(md, "CPU per run, tcp-idle") {
		t.Errorf("markdown has a CPU row for tcp-idle:\n%s", md)
	}

	// Met, and met exactly.
	for _, med := range []float64{11, 12} {
		if got := fmtTarget(mIdleRSS, spread{N: 1, Median: med, Min: med, Max: med}); got != "target ≤ 12: **met**" {
			t.Errorf("median %v: got %q, want met", med, got)
		}
	}
	if got := fmtTarget(mIdleRSS, spread{}); got != "target ≤ 12" {
		t.Errorf("no runs: got %q", got)
	}

	rates, lats := chartBars(r)
	var labels []string
	for _, b := range append(rates, lats...) {
		labels = append(labels, b.label)
	}
	if want := []string{"TCP 1 stream", "ping p50", "ping p99"}; !slices.Equal(labels, want) {
		t.Errorf("chart bars: got %v, want %v (nothing of tcp-idle)", labels, want)
	}
}

// A run of tcp-idle alone: the report and bench.json are written, no chart
// (and none of an earlier run left behind).
func TestUloopOnlyAlone(t *testing.T) {
	r := sampleReport()
	r.Cases = []*caseRecord{idleRecord()}
	if rates, lats := chartBars(r); len(rates)+len(lats) != 0 {
		t.Errorf("chart bars: got %v %v, want none", rates, lats)
	}
	dir := t.TempDir()
	for _, name := range []string{"bench.png", "bench.svg"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("stale"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	md := r.markdown()
	if err := r.write(dir, md); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bench.png", "bench.svg"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got %v, want it gone", name, err)
		}
	}
	var back report
	b, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	c := back.Cases[0]
	if !c.UloopOnly || c.Summary["rss_kib_per_conn"].Uloop.Median != 15 || c.Metrics[0].Target != 12 || c.Note == "" {
		t.Errorf("bench.json: got %+v, want tcp-idle, uloop only, median 15 KiB, target 12, its note", c)
	}
	if strings.Contains(md, "CPU per run") || strings.Contains(md, "NaN") {
		t.Errorf("markdown:\n%s", md)
	}
}

// runOne on a uloop-only case does not read the shared uloopd (there is
// none here: reading it would panic) and keeps the figures.
func TestRunOneUloopOnly(t *testing.T) {
	h := &harness{kernel: &netNS{side: "kernel"}, uloop: &netNS{side: "uloop"}}
	c := benchCase{Name: "idle", UloopOnly: true, Metrics: []metric{mIdleRSS, mIdleHeap},
		run: func(context.Context, *harness, *netNS) (runOutput, error) {
			return runOutput{Values: map[string]float64{"rss_kib_per_conn": 14.5}, Raw: idleResult{Connections: 200}}, nil
		}}
	r := h.runOne(context.Background(), c, h.uloop, 1)
	if r.Error != "" || r.Values["rss_kib_per_conn"] != 14.5 || r.DaemonCPUSeconds != nil || r.DaemonTUNPackets != nil || r.Work != nil {
		t.Errorf("got %+v, want the figure and nothing of the shared uloopd", r)
	}
	if math.IsNaN(r.Values["rss_kib_per_conn"]) {
		t.Error("NaN figure")
	}
}
