//go:build linux

package main

// Root tests: the harness end to end, built from this tree, with real
// namespaces, uloopd, iperf3 and ping. They check the report's shape and the
// cleanup, never a speed.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/uloop/uloop/netns"
)

// buildBench builds uloopd and uloop-bench side by side into a temporary
// directory, as `make build` puts them in bin/. It skips the test when not
// root or when uloopd does not build (its package may be mid-change).
func buildBench(t *testing.T) (dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, TUN device)")
	}
	if testing.Short() {
		t.Skip("-short: runs the benchmark")
	}
	dir = t.TempDir()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	build := func(pkg, out string) error {
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, out), pkg)
		cmd.Dir = filepath.Join("..", "..")             // the module root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	if err := build("./cmd/uloopd", "uloopd"); err != nil {
		t.Skipf("uloopd does not build: %v", err)
	}
	if err := build("./cmd/uloop-bench", "uloop-bench"); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestQuickRunEndToEnd(t *testing.T) {
	dir := buildBench(t)
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// 200 idle connections: a few seconds for tcp-idle, not the ten or
	// so of --quick's 1000.
	const idleConns = 200
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "uloop-bench"), "--quick", "--idle-conns", fmt.Sprint(idleConns), "--out", out)
	var stdout, stderr netns.Output
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("stderr:\n%s", stderr.String())
	if err != nil {
		t.Fatalf("uloop-bench --quick: %v\nstdout:\n%s", err, stdout.String())
	}
	pid := cmd.Process.Pid
	checkGone(t, dir, pid, nil)

	// The report file.
	b, err := os.ReadFile(filepath.Join(out, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("bench.json does not parse: %v", err)
	}
	if len(rep.Errors) != 0 {
		t.Errorf("errors: got %q, want none", rep.Errors)
	}
	m := rep.Machine
	if m.CPUModel == "" || m.Kernel == "" || m.GoVersion == "" || m.CPUs <= 0 || rep.Started.IsZero() {
		t.Errorf("machine: got %+v, started %v; want CPU model, kernel, Go version, date", m, rep.Started)
	}
	if k, u := rep.Namespaces["kernel"], rep.Namespaces["uloop"]; k.LoMTU <= 0 || u.Ulo0MTU <= 0 ||
		!strings.Contains(k.Name, fmt.Sprint(pid)) || !strings.Contains(u.Name, fmt.Sprint(pid)) {
		t.Errorf("namespaces: got %+v, want both named with PID %d, lo and ulo0 MTUs", rep.Namespaces, pid)
	}
	if d := rep.Daemon; d.CPUSecondsTCP <= 0 || d.PeakRSSKiB <= 0 || d.PID <= 0 {
		t.Errorf("uloopd: got %+v, want CPU seconds, peak RSS and PID", d)
	}
	byName := map[string]*caseRecord{}
	for _, c := range rep.Cases {
		byName[c.Name] = c
	}
	md := stdout.String()
	for _, bc := range cases {
		c := byName[bc.Name]
		if c == nil {
			t.Errorf("case %s: missing from bench.json", bc.Name)
			continue
		}
		if !strings.Contains(md, "| "+bc.Title+" |") && !(bc.UloopOnly && strings.Contains(md, "| "+bc.Title+" *(uloop only)* |")) {
			t.Errorf("case %s: no row %q in the Markdown on stdout", bc.Name, bc.Title)
		}
		if bc.UloopOnly {
			checkIdleCase(t, c, md, pid, idleConns)
			continue
		}
		sides := map[string]int{}
		for _, r := range c.Runs {
			sides[r.Side]++
			if r.Error != "" {
				t.Errorf("case %s, %s run %d: %s", c.Name, r.Side, r.Rep, r.Error)
			}
			for _, mt := range bc.Metrics {
				v, ok := r.Values[mt.Key]
				if !ok || v < 0 || (v == 0 && !mt.MayBeZero) {
					t.Errorf("case %s, %s run %d: %s is %v (present: %v), want a positive figure", c.Name, r.Side, r.Rep, mt.Key, v, ok)
				}
			}
			if r.Side == "uloop" && (r.DaemonCPUSeconds == nil || *r.DaemonCPUSeconds < 0 || r.DaemonTUNPackets == nil || *r.DaemonTUNPackets <= 0) {
				t.Errorf("case %s, uloop run %d: uloopd CPU seconds %v, packets from ulo0 %v; want a figure and a positive count", c.Name, r.Rep, r.DaemonCPUSeconds, r.DaemonTUNPackets)
			}
			if r.Side == "uloop" && r.DaemonCPUSeconds != nil && (r.DaemonSystemSeconds == nil || *r.DaemonSystemSeconds < 0 || *r.DaemonSystemSeconds > *r.DaemonCPUSeconds+1e-9) {
				t.Errorf("case %s, uloop run %d: uloopd system seconds %v of %v in all; want a part of it", c.Name, r.Rep, r.DaemonSystemSeconds, *r.DaemonCPUSeconds)
			}
		}
		for _, r := range c.Runs {
			if err := checkIperfMode(c.Name, r.Raw); err != nil {
				t.Errorf("case %s, %s run: %v", c.Name, r.Side, err)
			}
			if err := checkWork(bc, r, rep.Config); err != nil {
				t.Errorf("case %s, %s run: %v", c.Name, r.Side, err)
			}
		}
		if bc.Work != nil {
			if u := c.DaemonCPUPerUnit; c.WorkUnit == nil || c.WorkUnit.CPUUnit != bc.Work.CPUUnit || u.N != 1 || u.Median < 0 {
				t.Errorf("case %s: work unit %+v, CPU per unit %+v; want %q and one figure", c.Name, c.WorkUnit, u, bc.Work.CPUUnit)
			}
			row := "| CPU per run, " + bc.Name + " | "
			line, _, _ := strings.Cut(md[max(strings.Index(md, row), 0):], "\n")
			if !strings.HasPrefix(line, row) || !regexp.MustCompile(` `+regexp.QuoteMeta(bc.Work.CPUUnit)+`( \([^)]*\))?; \d+% in the kernel \|$`).MatchString(line) {
				t.Errorf("case %s: row %q, want one with %q and the kernel's share", c.Name, line, bc.Work.CPUUnit)
			}
		}
		if sides["kernel"] != 1 || sides["uloop"] != 1 {
			t.Errorf("case %s: got runs %v, want one per side", c.Name, sides)
		}
		for _, mt := range bc.Metrics {
			s := c.Summary[mt.Key]
			if mt.MayBeZero {
				continue
			}
			if s.Kernel.N != 1 || s.Uloop.N != 1 || s.Ratio.N != 1 || s.Ratio.Median <= 0 {
				t.Errorf("case %s, %s: got summary %+v, want one figure per side and a positive ratio", c.Name, mt.Key, s)
			}
		}
	}
	if md2, err := os.ReadFile(filepath.Join(out, "bench.md")); err != nil || string(md2) != md {
		t.Errorf("bench.md: got %v, want the Markdown printed on stdout", err)
	}
	for _, name := range []string{"bench.png", "bench.svg"} {
		st, err := os.Stat(filepath.Join(out, name))
		if err != nil || st.Size() == 0 {
			t.Errorf("chart %s: got %v, want a non-empty file", name, err)
		}
	}
}

// checkIdleCase checks tcp-idle's one run from bench.json: on the uloop
// side alone, in a namespace of its own named after the harness, through a
// uloopd of its own that relayed exactly the conns connections opened, and
// grew by something per connection (RSS and heap); and its rows in the
// Markdown: uloop only, no kernel figure, the target in the last column.
func checkIdleCase(t *testing.T, c *caseRecord, md string, pid, conns int) {
	t.Helper()
	if len(c.Runs) != 1 || c.Runs[0].Side != "uloop" {
		t.Fatalf("tcp-idle: got runs %+v, want one, uloop side", c.Runs)
	}
	r := c.Runs[0]
	if r.Error != "" {
		t.Fatalf("tcp-idle: %s", r.Error)
	}
	b, _ := json.Marshal(r.Raw)
	var res idleResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("tcp-idle raw %s: %v", b, err)
	}
	if res.Connections != conns || res.ConnectionsActive != float64(conns) || res.Bytes != 1024 {
		t.Errorf("tcp-idle: %d connections opened, uloopd relaying %v, %d bytes each way; want %d, %d, 1024", res.Connections, res.ConnectionsActive, res.Bytes, conns, conns)
	}
	if want := fmt.Sprintf("ulb-%d-idle1", pid); res.Namespace != want {
		t.Errorf("tcp-idle: namespace %q, want %q", res.Namespace, want)
	}
	if res.DaemonPID <= 0 || res.RSSBeforeKiB <= 0 || res.RSSAfterKiB <= res.RSSBeforeKiB {
		t.Errorf("tcp-idle: uloopd pid %d, RSS %d KiB before and %d after; want growth", res.DaemonPID, res.RSSBeforeKiB, res.RSSAfterKiB)
	}
	perConn := r.Values["rss_kib_per_conn"]
	if want := float64(res.RSSAfterKiB-res.RSSBeforeKiB) / float64(conns); perConn <= 0 || !near(perConn, want) {
		t.Errorf("tcp-idle: RSS growth per connection %v KiB, want (after - before) / %d = %v, above 0", perConn, conns, want)
	}
	// A relayed connection costs uloopd two stack endpoints and their
	// goroutines: kilobytes, not bytes nor megabytes.
	if perConn < 1 || perConn > 1024 {
		t.Errorf("tcp-idle: %v KiB per connection, want 1 to 1024", perConn)
	}
	if res.HeapInuseBefore == nil || res.HeapInuseAfter == nil || r.Values["heap_kib_per_conn"] <= 0 {
		t.Errorf("tcp-idle: heap in use %v to %v, per connection %v KiB; want growth", res.HeapInuseBefore, res.HeapInuseAfter, r.Values["heap_kib_per_conn"])
	}
	if r.DaemonCPUSeconds != nil || r.DaemonTUNPackets != nil {
		t.Errorf("tcp-idle: shared uloopd's CPU %v and packets %v read around it", r.DaemonCPUSeconds, r.DaemonTUNPackets)
	}
	s := c.Summary["rss_kib_per_conn"]
	if s.Kernel.N != 0 || s.Ratio.N != 0 || s.Uloop.N != 1 || s.Uloop.Median != perConn {
		t.Errorf("tcp-idle: summary %+v, want the uloop figure alone", s)
	}
	row := fmt.Sprintf("| %s *(uloop only)* | RSS growth per connection, KiB ↓ | – | %s | target ≤ 12: **", c.Title, fmtNum(perConn))
	if !strings.Contains(md, row) {
		t.Errorf("tcp-idle: no row starting %q in the Markdown:\n%s", row, md)
	}
	if !strings.Contains(md, fmt.Sprintf("- `tcp-idle`: a fresh uloopd per run, %d connections", conns)) {
		t.Errorf("tcp-idle: no note under the table")
	}
}

// checkWork checks a run's work against the figures it reported: the bytes
// of an iperf3 case against its received rate over --time, round trips and
// connections against their rate over --time (plus the warm-up), echo
// replies against --pings; and, on the uloop side, that uloopd's CPU per
// unit is its CPU over that work.
func checkWork(bc benchCase, r runRecord, cfg configRecord) error {
	if bc.Work == nil {
		return nil
	}
	if r.Work == nil || *r.Work <= 0 {
		return fmt.Errorf("work %v, want a positive count of %s", r.Work, bc.Work.Name)
	}
	w, T := *r.Work, cfg.DurationSecs
	var lo, hi float64 // the range the work must be in
	switch *bc.Work {
	case workBytes:
		// iperf3's receiver runs for about T.
		rate := r.Values["gbps"] * 1e9 / 8
		lo, hi = rate*T*0.9, rate*T*1.2
	case workRoundTrips, workConns:
		warm := float64(crrWarmUp)
		if *bc.Work == workRoundTrips {
			warm = float64(rrWarmUp)
			if strings.Contains(bc.Command, "-conns 16") {
				warm *= 16
			}
		}
		rate := r.Values["per_s"]
		lo, hi = rate*T*0.95+warm, rate*T*1.05+warm
	case workEchoes:
		lo, hi = float64(cfg.Pings), float64(cfg.Pings)
	default:
		return fmt.Errorf("work unit %+v: not checked here", *bc.Work)
	}
	if w < lo || w > hi {
		return fmt.Errorf("work %v %s, want %v to %v from the figures %v", w, bc.Work.Name, lo, hi, r.Values)
	}
	if r.Side != "uloop" {
		if r.DaemonCPUPerUnit != nil {
			return fmt.Errorf("kernel run with uloopd CPU per unit %v", *r.DaemonCPUPerUnit)
		}
		return nil
	}
	if r.DaemonCPUSeconds == nil || r.DaemonCPUPerUnit == nil {
		return fmt.Errorf("uloopd CPU %v, per unit %v: want both", r.DaemonCPUSeconds, r.DaemonCPUPerUnit)
	}
	if want := *r.DaemonCPUSeconds / w * bc.Work.Scale; !near(*r.DaemonCPUPerUnit, want) {
		return fmt.Errorf("uloopd CPU per unit %v, want %v s / %v x %g = %v", *r.DaemonCPUPerUnit, *r.DaemonCPUSeconds, w, bc.Work.Scale, want)
	}
	return nil
}

// checkIperfMode checks, from iperf3's own "end" object, that an iperf3 case
// ran the test its title promises: the direction, the number of streams, UDP.
func checkIperfMode(name string, raw any) error {
	for _, c := range cases {
		if c.Name == name && !strings.HasPrefix(c.Command, "iperf3 ") {
			return nil
		}
	}
	end, _ := raw.(map[string]any)
	if end == nil {
		return fmt.Errorf("no iperf3 end object in the results")
	}
	streams, _ := end["streams"].([]any)
	sumSent, _ := end["sum_sent"].(map[string]any)
	sum, _ := end["sum"].(map[string]any)
	wantStreams, clientSends := 1, true
	switch name {
	case "tcp-4":
		wantStreams = 4
	case "tcp-1-reverse":
		clientSends = false
	}
	if len(streams) != wantStreams {
		return fmt.Errorf("iperf3 ran %d streams, want %d", len(streams), wantStreams)
	}
	// sum_sent.sender says whether the side that printed the report (the
	// client) sent: false under -R.
	if sumSent == nil || sumSent["sender"] != clientSends {
		return fmt.Errorf("iperf3 end.sum_sent %v: want sender %v", sumSent, clientSends)
	}
	if udp := strings.HasPrefix(name, "udp-"); udp != (sum != nil && sum["lost_percent"] != nil) {
		return fmt.Errorf("iperf3 end.sum %v: UDP case %v", sum, udp)
	}
	return nil
}

// TestInterrupt stops the harness mid-run, while iperf3 runs against uloop,
// and checks that it tears everything down and exits 130.
func TestInterrupt(t *testing.T) {
	dir := buildBench(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			b := startBench(t, dir, "--quick", "--out", filepath.Join(dir, "out-"+sig.String()))
			pid, stderr := b.cmd.Process.Pid, &b.stderr

			// Wait until the first uloop run has iperf3's server and
			// client running next to uloopd, noting the processes in
			// both namespaces to look for survivors later.
			var inside []procID
			err := netns.Poll(context.Background(), time.Minute, func() (bool, error) {
				if !strings.Contains(stderr.String(), "run 1/1  uloop  ...") {
					return false, nil
				}
				inside = nil
				for _, side := range []string{"kernel", "uloop"} {
					ids, err := procsInNetns(fmt.Sprintf("ulb-%d-%s", pid, side))
					if err != nil {
						return false, err
					}
					inside = append(inside, ids...)
				}
				iperf3 := 0
				for _, id := range inside {
					if id.comm == "iperf3" {
						iperf3++
					}
				}
				return iperf3 == 2, nil
			})
			if err != nil {
				t.Fatalf("waiting for the first uloop run's iperf3 server and client: %v; processes in the namespaces: %v; stderr:\n%s", err, inside, stderr.String())
			}
			// uloopd, and iperf3's server and client.
			if len(inside) < 3 {
				t.Errorf("processes in the namespaces before %v: got %v, want uloopd and iperf3's two", sig, inside)
			}
			b.interrupt(t, sig)
			if !strings.Contains(stderr.String(), "interrupted") {
				t.Errorf("stderr does not say it was interrupted:\n%s", stderr.String())
			}
			checkGone(t, dir, pid, inside)
			if t.Failed() {
				t.Logf("stderr:\n%s", stderr.String())
			}
		})
	}
}

// TestInterruptIdle stops the harness while tcp-idle holds its connections
// through its own uloopd, in its own namespace, and checks that this
// namespace and its processes go too.
func TestInterruptIdle(t *testing.T) {
	dir := buildBench(t)
	b := startBench(t, dir, "--cases", "tcp-idle", "--runs", "1", "--idle-conns", "500", "--out", filepath.Join(dir, "out-idle"))
	pid, stderr := b.cmd.Process.Pid, &b.stderr
	idleNS := fmt.Sprintf("ulb-%d-idle1", pid)

	// Wait for the fresh uloopd and `_tcp-idle` in tcp-idle's namespace.
	var inside []procID
	err := netns.Poll(context.Background(), time.Minute, func() (bool, error) {
		ids, err := procsInNetns(idleNS)
		if err != nil {
			return false, nil // not made yet
		}
		inside = ids
		var uloopd, idle bool
		for _, id := range ids {
			uloopd = uloopd || id.comm == "uloopd"
			idle = idle || id.comm == "uloop-bench"
		}
		return uloopd && idle, nil
	})
	if err != nil {
		t.Fatalf("waiting for uloopd and %s in %s: %v; processes: %v; stderr:\n%s", cmdTCPIdle, idleNS, err, inside, stderr.String())
	}
	b.interrupt(t, syscall.SIGINT)
	checkGone(t, dir, pid, inside)
	if _, err := os.Stat(filepath.Join(netns.Dir, idleNS)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: got %v, want it deleted", idleNS, err)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr.String())
	}
}

// benchProcess is the bench binary running in the background for a test.
type benchProcess struct {
	cmd            *exec.Cmd
	stdout, stderr netns.Output
	done           chan error // cmd.Wait's result, put back by whoever takes it
}

// startBench starts dir's uloop-bench with args; the test's cleanup kills
// and reaps it.
func startBench(t *testing.T, dir string, args ...string) *benchProcess {
	b := &benchProcess{cmd: exec.Command(filepath.Join(dir, "uloop-bench"), args...), done: make(chan error, 1)}
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		b.done <- <-b.done
	})
	return b
}

// interrupt sends sig and checks that the bench exits with status 130
// within 30 s.
func (b *benchProcess) interrupt(t *testing.T, sig os.Signal) {
	if err := b.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-b.done:
		b.done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30 s after %v; stderr:\n%s", sig, b.stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit: got %v, want status 130", err)
	}
}

// procID names a process across PID reuse.
type procID struct {
	pid   int
	start uint64 // in clock ticks after boot
	comm  string
}

// readProcID identifies pid; ok is false if it has exited (a zombie has:
// it runs nothing).
func readProcID(pid int) (id procID, ok bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return id, false
	}
	st, err := p.Stat()
	if err != nil || st.State == "Z" {
		return id, false
	}
	return procID{pid: pid, start: st.Starttime, comm: st.Comm}, true
}

// procsInNetns lists the processes in the named network namespace.
func procsInNetns(name string) ([]procID, error) {
	n, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	pids, err := n.Pids()
	var ids []procID
	for _, pid := range pids {
		if id, ok := readProcID(pid); ok {
			ids = append(ids, id)
		}
	}
	return ids, err
}

// checkGone fails the test if a namespace of harness pid is still listed, if
// a process in procs is still alive, or if a process still runs a binary
// from dir.
func checkGone(t *testing.T, dir string, pid int, procs []procID) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	prefix := fmt.Sprintf("ulb-%d-", pid)
	for line := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("namespace left behind: %s", line)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p := filepath.Join("/proc", e.Name())
		if exe, err := os.Readlink(filepath.Join(p, "exe")); err == nil && strings.HasPrefix(exe, dir+"/") {
			t.Errorf("process %s still runs %s", e.Name(), exe)
		}
	}
	for _, id := range procs {
		if now, ok := readProcID(id.pid); ok && now.start == id.start {
			t.Errorf("process %d (%s) survived the run", id.pid, id.comm)
		}
	}
}
