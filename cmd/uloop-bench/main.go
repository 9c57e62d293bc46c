//go:build linux

// Command uloop-bench measures uloop against the kernel's own loopback on
// the same machine in the same run.
//
//	sudo bin/uloop-bench                 # 3 interleaved runs per case, ~4 minutes
//	sudo bin/uloop-bench --quick         # each case once for 2 s, ~45 s
//	sudo make bench BENCHFLAGS='--runs 5 --time 10s'
//
// It makes two sibling network namespaces, ulb-PID-kernel (only lo, up) and
// ulb-PID-uloop (uloopd running), runs every case in each in turn (kernel,
// uloop, kernel, uloop, ...) and reports for each figure the median and range
// per side and the median of the per-pair ratios uloop/kernel. On a shared
// 2-core machine absolute numbers drift with whatever else runs; a ratio
// taken between two runs a few seconds apart drifts much less, so the ratio
// is the figure to quote.
//
// tcp-idle is the exception: uloop only, with a namespace and a uloopd of
// its own per run, it measures uloopd's memory per idle relayed connection
// against an absolute target.
//
// Output: a Markdown table on stdout; in --out (default bench-out/)
// bench.json (every raw figure, machine and configuration), bench.md (the
// table) and bench.png / bench.svg (uloop against kernel lo, kernel = 1.0).
// Progress goes to stderr. Every namespace and process it made is removed on
// exit, also after Ctrl-C or SIGTERM.
//
// Needs root, iperf3, ping (iputils) and ip (iproute2), and uloopd: by
// default the one next to this binary (bin/uloopd after `make build`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

type config struct {
	runs     int
	duration time.Duration // of each iperf3 run and each Go TCP case
	pings    int
	quick    bool
	outDir   string
	uloopd   string
	cases    []string // names to run; all when empty
	// idleConns is how many connections tcp-idle holds open.
	idleConns int
}

func main() {
	if handled, code := subcommand(os.Args[1:]); handled {
		os.Exit(code)
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "uloop-bench: %v\n", err)
		os.Exit(2)
	}
	os.Exit(run(cfg))
}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("uloop-bench", flag.ContinueOnError)
	fs.IntVar(&cfg.runs, "runs", 3, "runs of each case on each side, interleaved kernel, uloop, kernel, ...")
	fs.DurationVar(&cfg.duration, "time", 5*time.Second, "length of each iperf3 run and each TCP latency and connection-rate run (whole seconds)")
	fs.IntVar(&cfg.pings, "pings", 10000, "echo requests per ping run (at least 1000)")
	fs.BoolVar(&cfg.quick, "quick", false, "each case once for 2 s with 1000 pings and 1000 idle connections (flags given explicitly still win): a smoke run")
	fs.StringVar(&cfg.outDir, "out", "bench-out", "directory for bench.json, bench.md, bench.png and bench.svg")
	fs.StringVar(&cfg.uloopd, "uloopd", "", "uloopd binary (default: uloopd next to this binary)")
	fs.IntVar(&cfg.idleConns, "idle-conns", 5000, fmt.Sprintf("connections tcp-idle holds open through a fresh uloopd (at least %d)", idleMinConns))
	names := fs.String("cases", "", "comma-separated cases to run (default all): "+strings.Join(caseNames(), ","))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uloop-bench [flags]  (as root)\n\nMeasures uloop against kernel lo, interleaved, in two fresh network namespaces.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["runs"] {
			cfg.runs = 1
		}
		if !set["time"] {
			cfg.duration = 2 * time.Second
		}
		if !set["pings"] {
			cfg.pings = 1000
		}
		if !set["idle-conns"] {
			cfg.idleConns = 1000
		}
	}
	switch {
	case cfg.runs < 1:
		return cfg, errors.New("--runs must be at least 1")
	case cfg.duration < time.Second || cfg.duration%time.Second != 0:
		return cfg, errors.New("--time must be a whole number of seconds, at least 1s (iperf3 -t takes seconds)")
	case cfg.pings < 1000:
		return cfg, errors.New("--pings must be at least 1000 (a p99 needs them)")
	case cfg.idleConns < idleMinConns:
		return cfg, fmt.Errorf("--idle-conns must be at least %d (fewer are lost in the daemon's page and heap granularity)", idleMinConns)
	}
	if *names != "" {
		known := map[string]bool{}
		for _, n := range caseNames() {
			known[n] = true
		}
		for n := range strings.SplitSeq(*names, ",") {
			if !known[n] {
				return cfg, fmt.Errorf("unknown case %q; cases: %s", n, strings.Join(caseNames(), ", "))
			}
			cfg.cases = append(cfg.cases, n)
		}
	}
	return cfg, nil
}

// harness holds what one run of the benchmark made.
type harness struct {
	cfg    config
	self   string // this binary, for the hidden subcommands
	kernel *netNS
	uloop  *netNS
	daemon *daemon
	port   int // last iperf3 port used
	// idleSeq numbers the namespaces of tcp-idle's runs.
	idleSeq int
}

func (h *harness) nextPort() int {
	// A fresh port per run keeps a one-shot server from meeting the
	// previous run's sockets; SO_REUSEADDR would also do.
	h.port++
	if h.port < 5201 || h.port > 5999 {
		h.port = 5201
	}
	return h.port
}

// run is the whole benchmark; it returns the exit status: 0, 1 if any run
// failed, 130 if interrupted.
func run(cfg config) int {
	if err := preflight(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench: %v\n", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench: %v\n", err)
		return 1
	}
	h := &harness{cfg: cfg, self: self}

	// From here on a signal cancels ctx: the running command's process
	// group is killed, the case loop stops, and teardown runs. Later
	// signals are absorbed until teardown is done.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	rep := newReport(cfg)
	rep.Machine = machineInfo()
	status := 0
	if err := h.setup(ctx, rep); err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench: setup: %v\n", err)
		status = 1
	} else {
		status = h.runCases(ctx, rep)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "uloop-bench: interrupted; cleaning up")
		status = 130
	}
	h.finishDaemon(rep)
	if err := h.teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench: teardown: %v\n", err)
		if status == 0 {
			status = 1
		}
	} else {
		fmt.Fprintf(os.Stderr, "uloop-bench: removed namespaces %s and %s and every process in them\n", nsName(h.kernel), nsName(h.uloop))
	}
	if status == 130 || len(rep.Cases) == 0 {
		return status
	}
	rep.Finished = time.Now().UTC()
	rep.Machine.LoadAvgEnd = loadAvg()
	md := rep.markdown()
	fmt.Print(md)
	if err := rep.write(cfg.outDir, md); err != nil {
		fmt.Fprintf(os.Stderr, "uloop-bench: %v\n", err)
		return 1
	}
	if len(rep.Errors) > 0 {
		fmt.Fprintf(os.Stderr, "uloop-bench: %d run(s) failed:\n  %s\n", len(rep.Errors), strings.Join(rep.Errors, "\n  "))
		status = 1
	}
	return status
}

func nsName(n *netNS) string {
	if n == nil {
		return "(none)"
	}
	return n.Name()
}

// preflight checks what the run needs before it changes anything.
func preflight(cfg *config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces and runs uloopd (try: sudo make bench)")
	}
	var errs []error
	for _, tool := range []string{"ip", "iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			errs = append(errs, fmt.Errorf("%s not found in PATH (scripts/deps.sh installs it)", tool))
		}
	}
	if cfg.uloopd == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.uloopd = filepath.Join(filepath.Dir(self), "uloopd")
	}
	abs, err := filepath.Abs(cfg.uloopd)
	if err != nil {
		return err
	}
	cfg.uloopd = abs
	if st, err := os.Stat(abs); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		errs = append(errs, fmt.Errorf("no uloopd binary at %s (build it: go build -o bin/uloopd ./cmd/uloopd, or pass --uloopd PATH)", abs))
	}
	return errors.Join(errs...)
}

// setup makes the two namespaces and starts uloopd in one of them.
//
//	 ulb-PID-kernel                 ulb-PID-uloop
//	+---------------------+        +------------------------------------+
//	| lo (up)             |        | lo (up), ulo0 (TUN), uloopd        |
//	| client -> 127.0.0.1 |        | client -> 127.0.0.1 -> ulo0        |
//	|   -> lo -> server   |        |   -> uloopd (gVisor stack) -> ulo0 |
//	|                     |        |   -> server                        |
//	+---------------------+        +------------------------------------+
func (h *harness) setup(ctx context.Context, rep *report) error {
	pid := os.Getpid()
	var err error
	if h.kernel, err = addNetns(pid, "kernel"); err != nil {
		return err
	}
	if h.uloop, err = addNetns(pid, "uloop"); err != nil {
		return err
	}
	// uloopd brings lo up in its own namespace.
	if err := h.kernel.Do(func() error { return netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}) }); err != nil {
		return fmt.Errorf("lo up in %s: %w", h.kernel, err)
	}
	progress("starting %s in %s", h.cfg.uloopd, h.uloop)
	if h.daemon, err = startDaemon(ctx, h.uloop, h.cfg.uloopd); err != nil {
		return err
	}
	progress("uloopd ready after %.2f s (pid %d)", h.daemon.readyAt.Seconds(), h.daemon.p.Pid())
	rep.Daemon.PID = h.daemon.p.Pid()
	rep.Daemon.ReadySeconds = h.daemon.readyAt.Seconds()

	var errs []error
	for _, n := range []*netNS{h.kernel, h.uloop} {
		rec := nsRecord{Name: n.Name(), TCPCongestionControl: n.sysctl("net.ipv4.tcp_congestion_control")}
		rec.LoMTU, err = n.linkMTU("lo")
		errs = append(errs, err)
		if n == h.uloop {
			rec.Ulo0MTU, err = n.linkMTU("ulo0")
			errs = append(errs, err)
		}
		rep.Namespaces[n.side] = rec
	}
	return errors.Join(errs...)
}

// finishDaemon records uloopd's peak memory while it still runs.
func (h *harness) finishDaemon(rep *report) {
	if h.daemon == nil || h.daemon.p.Exited() {
		return
	}
	if kib, err := procPeakRSS(h.daemon.p.Pid()); err == nil {
		rep.Daemon.PeakRSSKiB = kib
	}
}

// teardown stops uloopd (SIGTERM: it restores its namespace), kills every
// process still in either namespace (whatever the harness started, and any
// process that left its group or entered by itself) and deletes the
// namespaces. It runs on every way out of run.
func (h *harness) teardown() error {
	var errs []error
	if h.daemon != nil {
		errs = append(errs, h.daemon.stop())
	}
	for _, n := range []*netNS{h.kernel, h.uloop} {
		if n != nil {
			errs = append(errs, n.KillAll(5*time.Second), n.Delete())
		}
	}
	return errors.Join(errs...)
}

// progress prints one line of progress on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "uloop-bench: "+format+"\n", args...)
}
