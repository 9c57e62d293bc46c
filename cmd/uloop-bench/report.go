//go:build linux

package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// report is everything one benchmark run found; it is written as bench.json.
type report struct {
	// Schema changes when a field changes meaning.
	Schema     int                 `json:"schema"`
	Started    time.Time           `json:"started"`
	Finished   time.Time           `json:"finished"`
	Machine    machine             `json:"machine"`
	Config     configRecord        `json:"config"`
	Namespaces map[string]nsRecord `json:"namespaces"` // by side: kernel, uloop
	Daemon     daemonRecord        `json:"uloopd"`
	Cases      []*caseRecord       `json:"cases"`
	// Errors are runs that failed (and have no figures); Warnings, runs
	// whose figures stand but that saw something a loopback should not
	// do (a refused connection).
	Errors   []string `json:"errors,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

type machine struct {
	CPUModel      string `json:"cpu_model"`
	CPUs          int    `json:"cpus"`
	MemTotalKiB   int64  `json:"mem_total_kib"`
	Kernel        string `json:"kernel"` // uname -srvm
	KernelRelease string `json:"kernel_release"`
	Hostname      string `json:"hostname"`
	GoVersion     string `json:"go_version"` // of this binary
	Iperf3Version string `json:"iperf3_version"`
	PingVersion   string `json:"ping_version"`
	// Load averages (1, 5, 15 min) at start and end: how busy the
	// machine was with other work.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

type configRecord struct {
	Runs         int      `json:"runs"`
	DurationSecs float64  `json:"duration_seconds"`
	Pings        int      `json:"pings"`
	IdleConns    int      `json:"idle_conns"`
	Quick        bool     `json:"quick"`
	Cases        []string `json:"cases"`
	Order        string   `json:"order"`
}

type nsRecord struct {
	Name                 string `json:"name"`
	LoMTU                int    `json:"lo_mtu"`
	Ulo0MTU              int    `json:"ulo0_mtu,omitempty"`
	TCPCongestionControl string `json:"tcp_congestion_control"`
}

type daemonRecord struct {
	Path         string  `json:"path"`
	GoVersion    string  `json:"go_version,omitempty"`
	PID          int     `json:"pid"`
	ReadySeconds float64 `json:"ready_seconds"`
	// CPUSecondsTCP is utime+stime used during the uloop runs of the TCP
	// cases, over TCPWallSeconds of those runs.
	CPUSecondsTCP  float64 `json:"cpu_seconds_tcp_cases"`
	TCPWallSeconds float64 `json:"wall_seconds_tcp_cases"`
	PeakRSSKiB     int64   `json:"peak_rss_kib"` // VmHWM
}

type caseRecord struct {
	Name    string `json:"name"`
	Title   string `json:"title"`
	Command string `json:"command"`
	TCP     bool   `json:"tcp"`
	// UloopOnly cases ran on the uloop side alone: no kernel figures,
	// no ratios; Note says what their figures are.
	UloopOnly bool                     `json:"uloop_only,omitempty"`
	Note      string                   `json:"note,omitempty"`
	Metrics   []metric                 `json:"metrics"`
	Runs      []runRecord              `json:"runs"`
	Summary   map[string]metricSummary `json:"summary"` // by metric key
	// DaemonCPU is uloopd's CPU seconds per uloop run.
	DaemonCPU spread `json:"uloopd_cpu_seconds"`
	// WorkUnit is what each run's Work counts, nil if the case counts
	// none; DaemonCPUPerUnit summarizes the uloop runs' CPU per unit of
	// it, in WorkUnit.CPUUnit.
	WorkUnit         *workUnit `json:"work_unit,omitempty"`
	DaemonCPUPerUnit spread    `json:"uloopd_cpu_per_unit"`
	// DaemonSystemShare is the share of uloopd's CPU spent in the kernel
	// per uloop run, 0 to 1.
	DaemonSystemShare spread `json:"uloopd_system_share"`
}

// runRecord is one run of one case on one side.
type runRecord struct {
	Side        string             `json:"side"`
	Rep         int                `json:"rep"`
	Started     time.Time          `json:"started"`
	WallSeconds float64            `json:"wall_seconds"`
	Values      map[string]float64 `json:"values,omitempty"`
	// Work is how much the run did, in units of the case's work_unit
	// (bytes received, round trips, ...), as the tool counted it.
	Work             *float64 `json:"work,omitempty"`
	DaemonCPUSeconds *float64 `json:"uloopd_cpu_seconds,omitempty"`
	// DaemonSystemSeconds is the part of DaemonCPUSeconds spent in the
	// kernel (stime): uloopd's system calls, which on a TUN include the
	// copies in and out and the peer's receive path and wake-up.
	DaemonSystemSeconds *float64 `json:"uloopd_system_seconds,omitempty"`
	// DaemonCPUPerUnit is DaemonCPUSeconds over Work, in the case's
	// work_unit.cpu_unit (s per GB, µs per round trip, ...).
	DaemonCPUPerUnit *float64 `json:"uloopd_cpu_per_unit,omitempty"`
	// DaemonTUNPackets is what uloopd read from ulo0 during the run
	// (uloop_tun_rx_packets_total); a uloop run without any failed.
	DaemonTUNPackets *float64 `json:"uloopd_tun_rx_packets,omitempty"`
	// Raw is what the tool reported beyond Values: iperf3's "end"
	// object, the ping or Go client's counts and percentiles.
	Raw     any    `json:"raw,omitempty"`
	Warning string `json:"warning,omitempty"`
	Error   string `json:"error,omitempty"`
}

type metricSummary struct {
	Kernel spread `json:"kernel"`
	Uloop  spread `json:"uloop"`
	// PairRatios are uloop/kernel for each pair of runs in which both
	// sides produced the figure and kernel's is not 0; Ratio summarizes
	// them. Its median is the headline figure.
	PairRatios []float64 `json:"pair_ratios"`
	Ratio      spread    `json:"ratio"`
}

func newReport(cfg config) *report {
	r := &report{
		Schema:     1,
		Started:    time.Now().UTC(),
		Namespaces: map[string]nsRecord{},
		Config: configRecord{
			Runs: cfg.runs, DurationSecs: cfg.duration.Seconds(), Pings: cfg.pings, IdleConns: cfg.idleConns, Quick: cfg.quick,
			Order: "each case: kernel, uloop, kernel, uloop, ... (kernel first in every pair)",
		},
		Daemon: daemonRecord{Path: cfg.uloopd},
	}
	r.Config.Cases = cfg.cases
	if len(r.Config.Cases) == 0 {
		r.Config.Cases = caseNames()
	}
	if bi, err := buildinfo.ReadFile(cfg.uloopd); err == nil {
		r.Daemon.GoVersion = bi.GoVersion
	}
	return r
}

// summarize computes each metric's spread per side and the pair ratios, and
// uloopd's CPU per run and per unit of work.
func (c *caseRecord) summarize() {
	c.Summary = map[string]metricSummary{}
	var cpu []float64
	for _, m := range c.Metrics {
		var k, u []float64
		var kOK, uOK []bool
		for _, r := range c.Runs {
			v, ok := r.Values[m.Key]
			ok = ok && r.Error == ""
			switch r.Side {
			case "kernel":
				k, kOK = append(k, v), append(kOK, ok)
			case "uloop":
				u, uOK = append(u, v), append(uOK, ok)
			}
		}
		rs := pairRatios(k, u, kOK, uOK)
		c.Summary[m.Key] = metricSummary{
			Kernel:     spreadOf(pick(k, kOK)),
			Uloop:      spreadOf(pick(u, uOK)),
			PairRatios: rs,
			Ratio:      spreadOf(rs),
		}
	}
	var perUnit, sysShare []float64
	for _, r := range c.Runs {
		if r.Side == "uloop" && r.DaemonCPUSeconds != nil {
			cpu = append(cpu, *r.DaemonCPUSeconds)
			if r.DaemonSystemSeconds != nil && *r.DaemonCPUSeconds > 0 {
				sysShare = append(sysShare, *r.DaemonSystemSeconds / *r.DaemonCPUSeconds)
			}
		}
		if r.Side == "uloop" && r.DaemonCPUPerUnit != nil && r.Error == "" {
			perUnit = append(perUnit, *r.DaemonCPUPerUnit)
		}
	}
	c.DaemonCPU = spreadOf(cpu)
	c.DaemonCPUPerUnit = spreadOf(perUnit)
	c.DaemonSystemShare = spreadOf(sysShare)
}

func pick(xs []float64, ok []bool) []float64 {
	var out []float64
	for i, x := range xs {
		if ok[i] {
			out = append(out, x)
		}
	}
	return out
}

// daemonTotals adds up uloopd's CPU over the uloop runs of the TCP cases.
func (r *report) daemonTotals() {
	r.Daemon.CPUSecondsTCP, r.Daemon.TCPWallSeconds = 0, 0
	for _, c := range r.Cases {
		if !c.TCP {
			continue
		}
		for _, run := range c.Runs {
			if run.Side == "uloop" && run.DaemonCPUSeconds != nil {
				r.Daemon.CPUSecondsTCP += *run.DaemonCPUSeconds
				r.Daemon.TCPWallSeconds += run.WallSeconds
			}
		}
	}
}

// markdown renders the report as the table printed on stdout.
func (r *report) markdown() string {
	r.daemonTotals()
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "## uloop vs kernel lo, %s\n\n", r.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "%s (%d CPUs), Linux %s, %s, %s, %s; load average %s at start, %s at end.\n\n",
		m.CPUModel, m.CPUs, m.KernelRelease, m.GoVersion, m.Iperf3Version, m.PingVersion, firstField(m.LoadAvgStart), firstField(m.LoadAvgEnd))
	k, u := r.Namespaces["kernel"], r.Namespaces["uloop"]
	fmt.Fprintf(&b, "MTU: kernel side lo %d; uloop side ulo0 %d (its lo %d). TCP congestion control %s / %s.\n",
		k.LoMTU, u.Ulo0MTU, u.LoMTU, k.TCPCongestionControl, u.TCPCongestionControl)
	runs := fmt.Sprintf("%d runs per side", r.Config.Runs)
	if r.Config.Runs == 1 {
		runs = "1 run per side"
	}
	fmt.Fprintf(&b, "%s, interleaved (kernel, uloop, kernel, ...); iperf3 and Go TCP cases %g s each; %d pings per run%s.\n\n",
		runs, r.Config.DurationSecs, r.Config.Pings, map[bool]string{true: "; --quick", false: ""}[r.Config.Quick])
	b.WriteString("Each side: median (min–max) over its runs. uloop/kernel: the ratio within each back-to-back pair of runs, median (min–max) over the pairs. No ratio for counts that may be 0 (retransmits, loss, failed connections). ↑ higher is better, ↓ lower is better.\n\n")
	b.WriteString("| Case | Metric | kernel lo | uloop | uloop/kernel |\n")
	b.WriteString("|---|---|--:|--:|--:|\n")
	var notes []string
	for _, c := range r.Cases {
		for i, mt := range c.Metrics {
			s := c.Summary[mt.Key]
			title := ""
			if i == 0 {
				title = c.Title
				if c.UloopOnly {
					title += " *(uloop only)*"
				}
			}
			arrow := "↓"
			if mt.Higher {
				arrow = "↑"
			}
			kernel, ratio := fmtSpread(mt, s.Kernel), "–"
			switch {
			case c.UloopOnly:
				// Nothing to compare with: the kernel column is
				// empty, the last one the figure's target.
				kernel, ratio = "–", fmtTarget(mt, s.Uloop)
			case !mt.MayBeZero:
				ratio = fmtRatio(s.Ratio)
			}
			fmt.Fprintf(&b, "| %s | %s, %s %s | %s | %s | %s |\n", title, mt.Label, mt.Unit, arrow,
				kernel, fmtSpread(mt, s.Uloop), ratio)
		}
		if c.Note != "" {
			notes = append(notes, fmt.Sprintf("- `%s`: %s\n", c.Name, c.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, ""))
	}
	d := r.Daemon
	b.WriteString("\n| uloopd | |\n|---|--:|\n")
	if d.TCPWallSeconds > 0 {
		fmt.Fprintf(&b, "| CPU (utime+stime) over the uloop runs of the TCP cases | %.2f s in %.1f s (%.0f%% of one core) |\n",
			d.CPUSecondsTCP, d.TCPWallSeconds, 100*d.CPUSecondsTCP/d.TCPWallSeconds)
	}
	perUnit := false
	for _, c := range r.Cases {
		if row := c.daemonCPURow(); row != "" {
			b.WriteString(row)
			perUnit = perUnit || c.DaemonCPUPerUnit.N > 0
		}
	}
	fmt.Fprintf(&b, "| peak RSS (VmHWM) | %.1f MiB |\n", float64(d.PeakRSSKiB)/1024)
	fmt.Fprintf(&b, "| ready after start | %.2f s |\n", d.ReadySeconds)
	if perUnit {
		b.WriteString("\nCPU per run: the median over the uloop runs, and its share of one core over their wall time. " +
			"After it, uloopd's CPU per unit of the work each run did, median (min–max) over the uloop runs: " +
			"per GB received by iperf3's receiver (1 GB = 10^9 bytes), per round trip or connection the Go client completed (its warm-up included), " +
			"per echo reply ping received. Lower is better; it is the figure to compare two uloopd builds with (`--uloopd`). " +
			"Last, the median share of that CPU spent in the kernel (stime): uloopd's system calls, which on a TUN carry the copies in and out and the peer's receive path and wake-up, work kernel lo does in the sender's own system call.\n")
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintf(&b, "\n**Warning**: %d run(s) saw what a loopback never does; their figures are in the table:\n\n", len(r.Warnings))
		for _, w := range r.Warnings {
			fmt.Fprintf(&b, "- %s\n", w)
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(&b, "\n%d run(s) failed and are left out of the figures above:\n\n", len(r.Errors))
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "- %s\n", e)
		}
	}
	return b.String()
}

// daemonCPURow is the uloopd table's row for c: uloopd's CPU per uloop
// run, as a share of one core, and per unit of work if c counts it; "" if
// no uloop run has a CPU figure.
func (c *caseRecord) daemonCPURow() string {
	if c.DaemonCPU.N == 0 {
		return ""
	}
	wall := 0.0
	for _, run := range c.Runs {
		if run.Side == "uloop" && run.DaemonCPUSeconds != nil {
			wall += run.WallSeconds
		}
	}
	cell := fmt.Sprintf("%.2f s", c.DaemonCPU.Median)
	if wall > 0 {
		cell += fmt.Sprintf(" (%.0f%% of one core)", 100*c.DaemonCPU.Median*float64(c.DaemonCPU.N)/wall)
	}
	if c.WorkUnit != nil && c.DaemonCPUPerUnit.N > 0 {
		u := c.DaemonCPUPerUnit
		cell += fmt.Sprintf("; %s %s", fmtSig3(u.Median), c.WorkUnit.CPUUnit)
		if u.N > 1 {
			cell += fmt.Sprintf(" (%s–%s)", fmtSig3(u.Min), fmtSig3(u.Max))
		}
	}
	if c.DaemonSystemShare.N > 0 {
		cell += fmt.Sprintf("; %.0f%% in the kernel", 100*c.DaemonSystemShare.Median)
	}
	return fmt.Sprintf("| CPU per run, %s | %s |\n", c.Name, cell)
}

func fmtSpread(m metric, s spread) string {
	switch s.N {
	case 0:
		return "n/a"
	case 1:
		return m.format(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", m.format(s.Median), m.format(s.Min), m.format(s.Max))
}

// fmtTarget is the last column of a uloop-only figure: its target, if it
// has one, and whether the median over the runs meets it.
func fmtTarget(m metric, s spread) string {
	if m.Target == 0 {
		return "–"
	}
	op, met := "≤", s.Median <= m.Target
	if m.Higher {
		op, met = "≥", s.Median >= m.Target
	}
	t := fmt.Sprintf("target %s %s", op, strconv.FormatFloat(m.Target, 'f', -1, 64))
	switch {
	case s.N == 0:
		return t
	case met:
		return t + ": **met**"
	}
	return t + ": **not met**"
}

func fmtRatio(s spread) string {
	switch s.N {
	case 0:
		return "–"
	case 1:
		return fmt.Sprintf("**%.2f**", s.Median)
	}
	return fmt.Sprintf("**%.2f** (%.2f–%.2f)", s.Median, s.Min, s.Max)
}

// fmtNum prints a figure with about three significant digits, whole numbers
// from 100 up.
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// fmtSig3 is fmtNum, but below 1 it keeps three significant digits with
// their trailing zeros (0.900, not 0.9), so that figures to be compared
// line up.
func fmtSig3(v float64) string {
	a := math.Abs(v)
	if a == 0 || a >= 1 || math.IsInf(a, 0) || math.IsNaN(a) {
		return fmtNum(v)
	}
	return strconv.FormatFloat(v, 'f', 2-int(math.Floor(math.Log10(a))), 64)
}

func firstField(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// write saves bench.json, bench.md and the charts in dir.
func (r *report) write(dir, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	files := map[string][]byte{"bench.json": append(js, '\n'), "bench.md": []byte(md)}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	written, err := writeCharts(r, dir)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if len(written) == 0 {
		// Nothing to chart (only uloop-only cases): no chart of an
		// earlier run may pass for this one's.
		for _, name := range []string{"bench.png", "bench.svg"} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		progress("no chart: no case with a uloop/kernel ratio ran")
	}
	progress("wrote %s", strings.Join(append([]string{filepath.Join(dir, "bench.json"), filepath.Join(dir, "bench.md")}, written...), ", "))
	return nil
}

// machineInfo describes the machine from /proc and uname.
func machineInfo() machine {
	m := machine{
		CPUs:          runtime.NumCPU(),
		GoVersion:     runtime.Version(),
		CPUModel:      "unknown CPU",
		Iperf3Version: firstOutputLine("iperf3", "--version"),
		PingVersion:   firstOutputLine("ping", "-V"),
		LoadAvgStart:  loadAvg(),
	}
	if fs, err := procfs.NewDefaultFS(); err == nil {
		if cpus, err := fs.CPUInfo(); err == nil && len(cpus) > 0 && cpus[0].ModelName != "" {
			m.CPUModel = cpus[0].ModelName
		}
		if mem, err := fs.Meminfo(); err == nil && mem.MemTotal != nil {
			m.MemTotalKiB = int64(*mem.MemTotal)
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = strings.Join([]string{unix.ByteSliceToString(u.Sysname[:]), unix.ByteSliceToString(u.Release[:]),
			unix.ByteSliceToString(u.Version[:]), unix.ByteSliceToString(u.Machine[:])}, " ")
		m.KernelRelease = unix.ByteSliceToString(u.Release[:])
		m.Hostname = unix.ByteSliceToString(u.Nodename[:])
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load averages, "" if unknown.
func loadAvg() string {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return ""
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15)
}

func firstOutputLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	line, _, _ := bytes.Cut(bytes.TrimSpace(out), []byte("\n"))
	return string(line)
}
