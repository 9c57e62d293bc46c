//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/uloop/uloop/control"
)

// A metric is one figure a case reports per run.
type metric struct {
	Key    string `json:"key"`
	Label  string `json:"label"`
	Unit   string `json:"unit"`
	Higher bool   `json:"higher_is_better"`
	// MayBeZero marks a count that is legitimately 0 (retransmits, loss);
	// every other figure of a successful run is positive. The report
	// gives no ratio for these: a ratio of two counts near zero says
	// nothing (JSON keeps it all the same).
	MayBeZero bool `json:"may_be_zero,omitempty"`
	// Integer figures print without decimals.
	Integer bool `json:"integer,omitempty"`
	// Optional marks a figure a run may lack (a metric an older uloopd
	// does not export); the run stands without it.
	Optional bool `json:"optional,omitempty"`
	// Target is an absolute goal for uloop's figure (at most this when
	// lower is better, at least when higher), for a case with no kernel
	// side to compare with; 0 if none.
	Target float64 `json:"target,omitempty"`
	// Chart is the bar's label on the chart; empty if not charted.
	Chart string `json:"chart,omitempty"`
}

// A workUnit is what a case counts as the work one run did, so that
// uloopd's CPU over the run can be given per unit of it: a figure that, unlike
// the CPU of a whole run, does not move with how much work a run happened to
// get through, and so resolves a small change between two uloopd builds.
type workUnit struct {
	// Name is what is counted, plural: "bytes received", "round trips".
	Name string `json:"name"`
	// CPUUnit is the unit of uloopd's CPU per unit of work as reported:
	// "s per GB", "µs per round trip".
	CPUUnit string `json:"cpu_unit"`
	// Scale turns CPU seconds per unit of work into CPUUnit: 1e9 for
	// seconds per GB (1 GB = 1e9 bytes), 1e6 for microseconds per unit.
	Scale float64 `json:"scale"`
}

var (
	workBytes      = workUnit{Name: "bytes received", CPUUnit: "s per GB", Scale: 1e9}
	workRoundTrips = workUnit{Name: "round trips", CPUUnit: "µs per round trip", Scale: 1e6}
	workConns      = workUnit{Name: "connections", CPUUnit: "µs per connection", Scale: 1e6}
	workEchoes     = workUnit{Name: "echo replies", CPUUnit: "µs per echo", Scale: 1e6}
)

// perUnit is cpuSeconds spent on work units of work, in u.CPUUnit; ok is
// false when no work was done.
func (u workUnit) perUnit(cpuSeconds, work float64) (v float64, ok bool) {
	if work <= 0 || cpuSeconds < 0 {
		return 0, false
	}
	return cpuSeconds / work * u.Scale, true
}

// runOutput is what one run of a case produced.
type runOutput struct {
	// Values are the figures, by metric key.
	Values map[string]float64
	// Work is how many units of the case's workUnit the run did, counted
	// by the tool (never a rate times a time); 0 for a case without one.
	Work float64
	// Raw is what the tool reported beyond Values, for the results file.
	Raw any
}

// A benchCase is one measurement, run in each namespace in turn.
type benchCase struct {
	Name  string
	Title string
	// Command is what runs on each side, for the reader of the results
	// (T is --time, N is --pings).
	Command string
	Metrics []metric
	// TCP cases make up the daemon CPU total.
	TCP bool
	// UloopOnly cases have no kernel side, hence no ratio, and bring
	// their own namespace and uloopd: they run once per --runs, on the
	// uloop side, and the shared uloopd's CPU and packets are not read
	// around them.
	UloopOnly bool
	// note, if set, says under the report's table what the case's
	// figures are, for a case the columns do not explain (uloop only).
	note func(cfg configRecord) string
	// Work is what the case counts as its work (run's runOutput.Work);
	// nil if it counts none.
	Work *workUnit
	run  func(ctx context.Context, h *harness, n *netNS) (runOutput, error)
}

var (
	mGbps        = metric{Key: "gbps", Label: "throughput", Unit: "Gbit/s", Higher: true}
	mRetransmits = metric{Key: "retransmits", Label: "retransmits", Unit: "segments", MayBeZero: true, Integer: true}
	mUDPGbps     = metric{Key: "gbps", Label: "received", Unit: "Gbit/s", Higher: true}
	mLoss        = metric{Key: "loss_pct", Label: "loss", Unit: "%", MayBeZero: true}
	mP50         = metric{Key: "p50_us", Label: "p50", Unit: "µs"}
	mP99         = metric{Key: "p99_us", Label: "p99", Unit: "µs"}
)

func with(m metric, chart string) metric { m.Chart = chart; return m }

func iperfCommand(args []string) string {
	return strings.Join(append([]string{"iperf3 -c 127.0.0.1 -t T -J"}, args...), " ")
}

func iperfTCPCase(name, title, chart string, args ...string) benchCase {
	return benchCase{
		Name: name, Title: title, TCP: true, Command: iperfCommand(args),
		Metrics: []metric{with(mGbps, chart), mRetransmits}, Work: &workBytes,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			f, raw, err := h.runIperf(ctx, n, args)
			return f.tcpOutput(raw), err
		},
	}
}

// iperfUDPCase sends UDP at rate ("0": as fast as the sender can).
func iperfUDPCase(name, title, chart, rate string, args ...string) benchCase {
	args = append([]string{"-u", "-b", rate}, args...)
	return benchCase{
		Name: name, Title: title, Command: iperfCommand(args),
		Metrics: []metric{with(mUDPGbps, chart), mLoss}, Work: &workBytes,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			f, raw, err := h.runIperf(ctx, n, args)
			return runOutput{Values: map[string]float64{"gbps": f.ReceivedGbps, "loss_pct": f.LostPercent}, Work: f.ReceivedBytes, Raw: raw}, err
		},
	}
}

// cases are all the cases, in the order they run.
var cases = []benchCase{
	iperfTCPCase("tcp-1", "iperf3 TCP, 1 stream", "TCP 1 stream"),
	iperfTCPCase("tcp-1-reverse", "iperf3 TCP, 1 stream, reverse (-R)", "TCP -R", "-R"),
	iperfTCPCase("tcp-4", "iperf3 TCP, 4 streams (-P 4)", "TCP -P 4", "-P", "4"),
	{
		Name: "tcp-1-ipv6", Title: "iperf3 TCP over ::1, 1 stream (-6)", TCP: true,
		Command: "iperf3 -6 -c ::1 -t T -J, against iperf3 -s -6 (on [::])",
		Metrics: []metric{with(mGbps, "TCP ::1"), mRetransmits}, Work: &workBytes,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			f, raw, err := h.runIperf6(ctx, n, nil)
			return f.tcpOutput(raw), err
		},
	},
	iperfUDPCase("udp-1400", "iperf3 UDP, 1400 B datagrams", "UDP 1400 B", "0", "-l", "1400"),
	iperfUDPCase("udp-32k", "iperf3 UDP, 32 KiB datagrams", "UDP 32 KiB", "0", "-l", "32768"),
	// A rate kernel lo carries with well under 1% loss on this kind of
	// machine (0.07% measured): what a program that does not flood sees.
	iperfUDPCase("udp-1400-300m", "iperf3 UDP, 1400 B datagrams at 300 Mbit/s", "UDP 300 Mbit/s", "300M", "-l", "1400"),
	{
		Name: "ping", Title: "ping 127.0.0.1 (ICMP echo, one at a time)",
		Command: "ping -n -A -c N 127.0.0.1",
		Metrics: []metric{with(mP50, "ping p50"), with(mP99, "ping p99")}, Work: &workEchoes,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			r, err := h.runPing(ctx, n)
			return runOutput{Values: map[string]float64{"p50_us": r.Summary.P50US, "p99_us": r.Summary.P99US}, Work: float64(r.Received), Raw: r}, err
		},
	},
	{
		Name: "tcp-rr", Title: "TCP 1-byte request/response, one connection, TCP_NODELAY", TCP: true,
		Command: "uloop-bench " + cmdTCPRR + " -duration T, against uloop-bench " + cmdEchoServer,
		Metrics: []metric{
			with(mP50, "TCP RR p50"), with(mP99, "TCP RR p99"),
			{Key: "per_s", Label: "round trips", Unit: "/s", Higher: true},
		},
		Work: &workRoundTrips,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			var r rrResult
			err := h.runGoClient(ctx, n, cmdTCPRR, &r)
			return r.output(), err
		},
	},
	{
		Name: "tcp-rr-16", Title: "TCP 1-byte request/response, 16 connections at once (a connection pool)", TCP: true,
		Command: "uloop-bench " + cmdTCPRR + " -duration T -conns 16, against uloop-bench " + cmdEchoServer,
		Metrics: []metric{
			{Key: "per_s", Label: "round trips", Unit: "/s", Higher: true, Chart: "TCP RR x16/s"},
			mP50, mP99,
		},
		Work: &workRoundTrips,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			var r rrResult
			err := h.runGoClient(ctx, n, cmdTCPRR, &r, "-conns", "16")
			return r.output(), err
		},
	},
	{
		Name: "tcp-crr", Title: "TCP connect, 1-byte request/response, close; one client", TCP: true,
		Command: "uloop-bench " + cmdTCPCRR + " -duration T, against uloop-bench " + cmdEchoServer,
		Metrics: []metric{
			{Key: "per_s", Label: "connections", Unit: "/s", Higher: true, Chart: "TCP connect/s"},
			{Key: "failed", Label: "failed", Unit: "connections", MayBeZero: true, Integer: true},
		},
		Work: &workConns,
		run: func(ctx context.Context, h *harness, n *netNS) (runOutput, error) {
			var r crrResult
			err := h.runGoClient(ctx, n, cmdTCPCRR, &r)
			if err == nil && r.Failed > 0 {
				// A loopback refuses no connection: the figures
				// stand, with a warning that cannot be missed.
				err = warning(fmt.Sprintf("%d connections failed (%d succeeded after the warm-up), first: %s", r.Failed, r.Connections, r.FirstError))
			}
			return runOutput{Values: map[string]float64{"per_s": r.PerSecond, "failed": float64(r.Failed)}, Work: float64(r.Connections + r.WarmUpConnections), Raw: r}, err
		},
	},
	tcpIdleCase,
}

// A warning from a case's run keeps the run's figures: something went wrong
// that the report must show, but what was measured still holds.
type warning string

func (w warning) Error() string { return string(w) }

func caseNames() []string {
	var names []string
	for _, c := range cases {
		names = append(names, c.Name)
	}
	return names
}

func (h *harness) selectedCases() []benchCase {
	if len(h.cfg.cases) == 0 {
		return cases
	}
	var sel []benchCase
	for _, c := range cases {
		for _, n := range h.cfg.cases {
			if c.Name == n {
				sel = append(sel, c)
				break
			}
		}
	}
	return sel
}

// runCases runs every selected case cfg.runs times on each side, kernel
// first in each pair, and records the results in rep. It returns 1 if a run
// failed, else 0; a failed run is recorded and the benchmark goes on.
func (h *harness) runCases(ctx context.Context, rep *report) int {
	sel := h.selectedCases()
	status := 0
	for ci, c := range sel {
		rec := &caseRecord{Name: c.Name, Title: c.Title, Command: c.Command, TCP: c.TCP, UloopOnly: c.UloopOnly, Metrics: c.Metrics, WorkUnit: c.Work}
		if c.note != nil {
			rec.Note = c.note(rep.Config)
		}
		rep.Cases = append(rep.Cases, rec)
		sides := []*netNS{h.kernel, h.uloop}
		if c.UloopOnly {
			sides = sides[1:]
		}
		for r := 1; r <= h.cfg.runs; r++ {
			for _, n := range sides {
				if ctx.Err() != nil {
					return status
				}
				fmt.Fprintf(os.Stderr, "uloop-bench: [%d/%d] %-13s run %d/%d  %-6s ... ", ci+1, len(sel), c.Name, r, h.cfg.runs, n.side)
				run := h.runOne(ctx, c, n, r)
				rec.Runs = append(rec.Runs, run)
				if run.Error != "" {
					if ctx.Err() != nil {
						fmt.Fprintln(os.Stderr, "interrupted")
						return status
					}
					fmt.Fprintf(os.Stderr, "FAILED\n    %s\n", strings.ReplaceAll(run.Error, "\n", "\n    "))
					rep.Errors = append(rep.Errors, fmt.Sprintf("%s run %d %s: %s", c.Name, r, n.side, firstLine(run.Error)))
					status = 1
					continue
				}
				if run.Warning != "" {
					fmt.Fprintf(os.Stderr, "%s (%.1f s)\n    WARNING: %s\n", describe(c.Metrics, run.Values), run.WallSeconds, run.Warning)
					rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s run %d %s: %s", c.Name, r, n.side, run.Warning))
					continue
				}
				fmt.Fprintf(os.Stderr, "%s (%.1f s)\n", describe(c.Metrics, run.Values), run.WallSeconds)
			}
		}
		rec.summarize()
	}
	return status
}

// runOne runs case c once in n, with uloopd's CPU time and the packets it
// read from ulo0 around it on the uloop side, and the CPU per unit of the
// work the run did. A uloop-only case brings its own uloopd, so the shared
// one is not read around it.
func (h *harness) runOne(ctx context.Context, c benchCase, n *netNS, rep int) runRecord {
	rec := runRecord{Side: n.side, Rep: rep, Started: time.Now().UTC()}
	var cpu0 cpuTimes
	var cpuErr, rxErr error
	var rx0 float64
	shared := n == h.uloop && !c.UloopOnly // the shared uloopd carries the run
	if shared {
		if h.daemon.p.Exited() {
			rec.Error = fmt.Sprintf("uloopd is no longer running: %v", h.daemon.exitErr())
			return rec
		}
		cpu0, cpuErr = procCPUTimes(h.daemon.p.Pid())
		rx0, rxErr = h.tunPackets(ctx)
	}
	out, err := c.run(ctx, h, n)
	rec.WallSeconds = time.Since(rec.Started).Seconds()
	rec.Raw = out.Raw
	if shared && cpuErr == nil {
		if cpu1, err := procCPUTimes(h.daemon.p.Pid()); err == nil {
			s, sys := (cpu1.total() - cpu0.total()).Seconds(), (cpu1.system - cpu0.system).Seconds()
			rec.DaemonCPUSeconds, rec.DaemonSystemSeconds = &s, &sys
		}
	}
	if shared && err == nil {
		// A uloop figure is uloop's only if the traffic crossed ulo0.
		rx1, err1 := h.tunPackets(ctx)
		if err = errors.Join(rxErr, err1); err == nil {
			d := rx1 - rx0
			rec.DaemonTUNPackets = &d
			if d <= 0 {
				err = errors.New("uloopd read no packet from ulo0 during the run: the traffic did not go through uloop")
			}
		}
	}
	var w warning
	if errors.As(err, &w) {
		rec.Warning, err = string(w), nil
	}
	if err == nil {
		err = checkValues(c.Metrics, out.Values)
	}
	if err == nil && c.Work != nil && !(out.Work > 0) {
		// A run that moved something counted it; 0 is a parser that
		// found nothing.
		err = fmt.Errorf("no %s counted", c.Work.Name)
	}
	if err != nil {
		if rec.Warning != "" {
			err = fmt.Errorf("%w (%s)", err, rec.Warning)
			rec.Warning = ""
		}
		rec.Error = err.Error()
		return rec
	}
	rec.Values = out.Values
	if c.Work != nil {
		rec.Work = &out.Work
		if rec.DaemonCPUSeconds != nil {
			if v, ok := c.Work.perUnit(*rec.DaemonCPUSeconds, out.Work); ok {
				rec.DaemonCPUPerUnit = &v
			}
		}
	}
	return rec
}

// tunPackets is what uloopd has read from ulo0 so far.
func (h *harness) tunPackets(ctx context.Context) (float64, error) {
	m, err := control.New(h.uloop.Namespace, 5*time.Second).Metrics(ctx)
	if err != nil {
		return 0, err
	}
	return m.Value("uloop_tun_rx_packets_total")
}

// checkValues rejects a run whose figures cannot be real: a missing figure,
// or a zero where only a positive value is possible (a parser that found
// nothing, a tool that measured nothing).
func checkValues(ms []metric, vals map[string]float64) error {
	var errs []error
	for _, m := range ms {
		v, ok := vals[m.Key]
		switch {
		case !ok && m.Optional:
		case !ok:
			errs = append(errs, fmt.Errorf("no %s figure", m.Label))
		case v < 0 || (v == 0 && !m.MayBeZero):
			errs = append(errs, fmt.Errorf("%s figure is %v", m.Label, v))
		}
	}
	return errors.Join(errs...)
}

func describe(ms []metric, vals map[string]float64) string {
	var parts []string
	for _, m := range ms {
		if v, ok := vals[m.Key]; ok {
			parts = append(parts, fmt.Sprintf("%s %s %s", m.Label, m.format(v), m.Unit))
		}
	}
	return strings.Join(parts, ", ")
}

func (m metric) format(v float64) string {
	if m.Integer {
		return fmt.Sprintf("%.0f", v)
	}
	return fmtNum(v)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
